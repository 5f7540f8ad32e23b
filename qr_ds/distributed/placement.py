"""How students share the launcher's processes: one ``Placement`` per ``placement:`` value.

A placement owns the ranks each student gets in a world (``students[].ranks``, with ``auto`` shares),
which global ranks those are, and whether students share ranks (then a chunk's states never leave its
rank). The layout (topology.py), the ranks rule (train/world.py), the strategy and the mutual exchange
ask it; a new placement is a subclass here, registered in ``PLACEMENTS``, from which the config's
``placement`` takes its allowed values.
"""
from __future__ import annotations

AUTO_RANKS = "auto"  # students[].ranks: an equal share of the ranks the other students leave

Blocks = tuple[tuple[int, ...], ...]  # student -> its global ranks


class Placement:
    """How students divide the launcher's processes. Subclasses set ``name``, ``help`` and
    ``students_share_ranks`` and give the rules below."""

    name: str
    help: str  # one line for the config reference
    students_share_ranks: bool  # every student runs on every rank: nothing is gathered across ranks

    def student_ranks(self, asked: list[int | str], world: int, source: str) -> list[int]:
        """Ranks of each student in a world of ``world`` processes started by ``source``;
        ValueError naming the config key when the students' ranks cannot fill it."""
        raise NotImplementedError

    def fixed_world(self, asked: list[int]) -> int:
        """The world these fixed rank counts ask for by themselves."""
        raise NotImplementedError

    def blocks(self, ranks: list[int], world_size: int) -> Blocks:
        """Each student's global ranks, given its rank count in this world."""
        raise NotImplementedError

    def ranks_problem(self, asked: list[int | str]) -> str | None:
        """Why students[].ranks cannot be placed this way whatever the world, or None."""
        return None


PLACEMENTS: dict[str, Placement] = {}


def register_placement(cls: type[Placement]) -> type[Placement]:
    PLACEMENTS[cls.name] = cls()
    return cls


@register_placement
class Separate(Placement):
    """Students get disjoint, contiguous rank blocks (student 0 first) and run concurrently. A student
    with ``ranks: N`` takes N; the ranks left of the launcher's world are shared equally by the students
    with ``ranks: auto``. The world must equal the fixed ranks plus an equal whole share (at least one)
    for each ``auto`` student."""

    name = "separate"
    help = "each student owns its own ranks (students[].ranks) and they run concurrently"
    students_share_ranks = False

    def student_ranks(self, asked: list[int | str], world: int, source: str) -> list[int]:
        fixed = sum(n for n in asked if n != AUTO_RANKS)
        autos = asked.count(AUTO_RANKS)
        left = world - fixed
        if autos == 0 and left == 0:
            return list(asked)
        if autos and left >= autos and left % autos == 0:
            return [left // autos if n == AUTO_RANKS else n for n in asked]
        if autos:
            want = (f"{fixed} plus " if fixed else "") + f"a positive multiple of {autos}"
        else:
            want = f"{fixed}, or ranks: auto to share any world"
        raise ValueError(f"config key 'students[].ranks': placement 'separate' gives each student its own ranks: "
                         f"the fixed ranks plus an equal share of the rest for each 'auto' student must make up the "
                         f"world, but {' + '.join(map(str, asked))} does not fit the {world} processes started by "
                         f"{source} (want a world of {want})")

    def fixed_world(self, asked: list[int]) -> int:
        return sum(asked)

    def blocks(self, ranks: list[int], world_size: int) -> Blocks:
        need = sum(ranks)
        if world_size != need:
            raise ValueError(
                f"placement 'separate' needs one process per student rank: students ask for "
                f"{' + '.join(map(str, ranks))} = {need} ranks but the launcher started {world_size}"
            )
        starts = [sum(ranks[:s]) for s in range(len(ranks))]
        return tuple(tuple(range(start, start + n)) for start, n in zip(starts, ranks))


@register_placement
class Colocated(Placement):
    """Every rank runs every student, one after another (the reference code's design); any world fits."""

    name = "colocated"
    help = "every rank runs every student, one after another; any world fits"
    students_share_ranks = True

    def student_ranks(self, asked: list[int | str], world: int, source: str) -> list[int]:
        return [world] * len(asked)

    def fixed_world(self, asked: list[int]) -> int:
        return asked[0]

    def blocks(self, ranks: list[int], world_size: int) -> Blocks:
        return tuple(tuple(range(world_size)) for _ in ranks)

    def ranks_problem(self, asked: list[int | str]) -> str | None:
        if len(set(asked)) > 1:
            return "colocated placement runs every student on every rank; leave ranks at the same value"
        return None
