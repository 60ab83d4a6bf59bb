"""Domain-adaptation settings: named views over a manifest (docs/manifest.md).

A :class:`Setting` says which domains are the (labelled) source and which the target:

* single pairs, ``--source D1 --target D2`` (MM-SADA, 6 pairs over EPIC-55 D1/D2/D3);
* multi-source, ``--source D1,D2 --target D3`` (RNA-Net domain generalisation, 3 settings);
* named settings, ``--setting epic100-uda`` (``source -> target``), ``--setting D1-D2``...

:func:`select` cuts a manifest into the frames a run uses: ``source_train``, ``source_val``,
``source_test``, ``target_train``, ``target_val``, ``target_test``. Labels of ``target_train``
are hidden by default: unsupervised adaptation must never see them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

import pandas as pd

from avda.errors import ConfigError, ManifestError
from avda.registry import unknown_name_message

LABEL_COLUMNS: tuple[str, ...] = (
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "labels",
    "all_nouns",
    "all_noun_classes",
)
PARTS: tuple[str, ...] = (
    "source_train",
    "source_val",
    "source_test",
    "target_train",
    "target_val",
    "target_test",
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """Source and target domains of one adaptation (or generalisation) experiment."""

    source_domains: tuple[str, ...]
    target_domains: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        source = tuple(str(d) for d in self.source_domains)
        target = tuple(str(d) for d in self.target_domains)
        if not source or not target:
            raise ConfigError(
                "a setting needs at least one source and one target domain, "
                f"got source={list(source)} target={list(target)}"
            )
        overlap = sorted(set(source) & set(target))
        if overlap:
            raise ConfigError(
                f"domain(s) {', '.join(overlap)} are both source and target; "
                "a domain can only be on one side"
            )
        object.__setattr__(self, "source_domains", source)
        object.__setattr__(self, "target_domains", target)
        if not self.name:
            object.__setattr__(self, "name", f"{','.join(source)}-{','.join(target)}")

    @property
    def domains(self) -> tuple[str, ...]:
        return self.source_domains + self.target_domains

    @property
    def multi_source(self) -> bool:
        return len(self.source_domains) > 1

    def check_domains(self, known: Iterable[str]) -> None:
        """Raise a ConfigError naming the domains the manifest lacks and the ones it has."""
        known = sorted({str(d) for d in known})
        missing = [d for d in self.domains if d not in known]
        if missing:
            raise ConfigError(
                "; ".join(unknown_name_message("domain", d, known) for d in missing)
                + f" (setting {self.name})"
            )


MMSADA_DOMAINS: tuple[str, ...] = ("D1", "D2", "D3")
MMSADA_PAIRS: tuple[Setting, ...] = tuple(
    Setting((source,), (target,), f"{source}-{target}")
    for source, target in itertools.permutations(MMSADA_DOMAINS, 2)
)
"""The 6 single-source EPIC-55 pairs of MM-SADA: D1-D2, D1-D3, D2-D1, D2-D3, D3-D1, D3-D2."""

DG_SETTINGS: tuple[Setting, ...] = tuple(
    Setting(
        tuple(d for d in MMSADA_DOMAINS if d != target),
        (target,),
        f"{','.join(d for d in MMSADA_DOMAINS if d != target)}-{target}",
    )
    for target in MMSADA_DOMAINS
)
"""The 3 multi-source domain-generalisation settings of RNA-Net: D2,D3-D1, D1,D3-D2, D1,D2-D3."""

EPIC100_UDA = Setting(("source",), ("target",), "epic100-uda")
CHARADES_EGO = Setting(("third",), ("first",), "charades-ego")
UCF_HMDB_SETTINGS: tuple[Setting, ...] = (
    Setting(("ucf",), ("hmdb",), "ucf-hmdb"),
    Setting(("hmdb",), ("ucf",), "hmdb-ucf"),
)
UCF_OLYMPIC_SETTINGS: tuple[Setting, ...] = (
    Setting(("ucf",), ("olympic",), "ucf-olympic"),
    Setting(("olympic",), ("ucf",), "olympic-ucf"),
)
ACTORSHIFT = Setting(("human",), ("animal",), "actorshift")

SETTING_GROUPS: dict[str, tuple[Setting, ...]] = {
    "epic55-mmsada": MMSADA_PAIRS,
    "epic55-dg": DG_SETTINGS,
}
"""Names that stand for several settings: the 6 MM-SADA pairs, the 3 RNA-Net DG settings."""

NAMED_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        *MMSADA_PAIRS,
        *DG_SETTINGS,
        EPIC100_UDA,
        CHARADES_EGO,
        *UCF_HMDB_SETTINGS,
        *UCF_OLYMPIC_SETTINGS,
        ACTORSHIFT,
    )
}


def split_domains(text: str, option: str) -> tuple[str, ...]:
    """``"D1, D2"`` -> ``("D1", "D2")``; empty names are an error."""
    parts = tuple(part.strip() for part in str(text).split(","))
    if not parts or any(not part for part in parts):
        raise ConfigError(f"{option} expects comma-separated domain names, got {text!r}")
    return parts


def resolve_setting(
    *,
    source: str | None = None,
    target: str | None = None,
    setting: str | None = None,
    known_domains: Iterable[str] | None = None,
    named: Mapping[str, Setting] | None = None,
) -> Setting:
    """The setting asked for on the command line: ``--setting NAME`` or ``--source/--target``.

    ``named`` are the settings to look names up in (default: every known named setting);
    ``known_domains`` (the manifest's domains), when given, are checked.
    """
    if setting is not None and (source is not None or target is not None):
        raise ConfigError("give either --setting or --source/--target, not both")
    if setting is not None:
        table = dict(NAMED_SETTINGS if named is None else named)
        if setting not in table:
            arrow = setting.replace("→", "->")
            if "->" in arrow:
                left, right = arrow.split("->", 1)
                chosen = Setting(
                    split_domains(left, "--setting"), split_domains(right, "--setting")
                )
            else:
                raise ConfigError(unknown_name_message("setting", setting, table))
        else:
            chosen = table[setting]
    else:
        if source is None or target is None:
            raise ConfigError(
                "give both --source and --target (e.g. --source D1 --target D2, "
                "--source D1,D2 --target D3) or a named --setting"
            )
        chosen = Setting(split_domains(source, "--source"), split_domains(target, "--target"))
    if known_domains is not None:
        chosen.check_domains(known_domains)
    return chosen


def select(
    manifest: pd.DataFrame, setting: Setting, *, keep_target_train_labels: bool = False
) -> dict[str, pd.DataFrame]:
    """Cut ``manifest`` into the six parts of ``setting`` (always all keys; parts may be empty).

    ``target_train`` loses its label columns (set to missing) unless
    ``keep_target_train_labels``: it is the unlabelled target data of adaptation.
    """
    for column in ("domain", "split"):
        if column not in manifest.columns:
            raise ManifestError(f"the manifest has no {column!r} column; build it again")
    setting.check_domains(manifest["domain"].astype(str).unique())
    domain = manifest["domain"].astype(str)
    split = manifest["split"].astype(str)
    parts: dict[str, pd.DataFrame] = {}
    for side, domains in (("source", setting.source_domains), ("target", setting.target_domains)):
        in_side = domain.isin(domains)
        for part_split in ("train", "val", "test"):
            parts[f"{side}_{part_split}"] = manifest[in_side & (split == part_split)].reset_index(
                drop=True
            )
    if not keep_target_train_labels:
        hidden = parts["target_train"].copy()
        for column in LABEL_COLUMNS:
            if column in hidden.columns:
                hidden[column] = _missing_like(hidden[column])
        parts["target_train"] = hidden
    return parts


def _missing_like(column: pd.Series) -> pd.Series:
    """A column of missing values with a dtype that can hold them."""
    if pd.api.types.is_integer_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        dtype = "Int64"
    elif pd.api.types.is_float_dtype(column.dtype):
        dtype = "float64"
    else:
        dtype = "string"
    return pd.Series(pd.NA, index=column.index, dtype=dtype)
