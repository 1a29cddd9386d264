from animus.cli import main

raise SystemExit(main())
