"""The public surface of `projections` is what `__all__` says, sorted."""

from __future__ import annotations

import projections


class TestExports:
    def test_all_is_sorted_and_unique(self) -> None:
        assert projections.__all__ == sorted(set(projections.__all__))

    def test_every_exported_name_exists(self) -> None:
        missing = [n for n in projections.__all__ if not hasattr(projections, n)]
        assert missing == []

    def test_every_public_function_of_the_submodules_is_exported(self) -> None:
        from projections import projector, queries, replay

        names = {
            name
            for module in (queries, replay)
            for name in module.__dict__
            if not name.startswith("_")
            and callable(getattr(module, name))
            and getattr(getattr(module, name), "__module__", None) == module.__name__
        }
        names.discard("Progress")
        assert names <= set(projections.__all__)
        assert projector.HANDLERS is projections.HANDLERS
