"""The app spec: dlapp's native YAML and the reference system's ``dl_app.properties``.

An ``AppSpec`` is validated when built and round-trips: ``AppSpec.from_dict(spec.to_dict())``
equals ``spec``. Unknown keys are refused with the list of valid ones. The user is never a spec
field: it is whoever the server authenticated.
"""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dlapp import arrays
from dlapp.errors import SpecError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@+-]{0,127}$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# a container user: numeric UID[:GID] only (a name could resolve to root inside the image)
_USER_RE = re.compile(r"^([0-9]{1,32})(?::([0-9]{1,32}))?$", re.ASCII)
MAX_ID = 2**31 - 1  # larger IDs are refused by runc, or wrap to 0 once cut to 32 bits
# docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_IMAGE_RE = re.compile(
    rf"^(?:{_DOMAIN}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
    re.ASCII,
)
_NAME_MAX = 255  # docker's longest repository name
# a size as dlapp reads it everywhere (specs, queue files, traces): a number, a unit (none: MiB)
# and a suffix (B, iB, or Kubernetes' bare i); what each reader accepts of it is its own
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B|i)?\s*$", re.IGNORECASE)
MIB_PER_UNIT = {"": 1.0, "K": 1.0 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}
_MIB_PER_BYTE = 1.0 / 1024 / 1024
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_DUR_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
RESERVED_ENV = (
    "DLAPP_APP_ID",
    "DLAPP_GPU_FRACTION",
    "DLAPP_GPU_MEMORY_MB",
    "CONTAINER_INDEX",
    "NUM_CONTAINERS",
    "CUDA_VISIBLE_DEVICES",
    "DLAPP_WORKSPACE",
    "DLAPP_NOTICE_FILE",
    "DLAPP_CHECKPOINT_DIR",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    *arrays.ARRAY_ENV,
)


MIG_SLICES = 7  # compute slices of an A100 / H100 / H200 in MIG mode
GPU_MILLI = 1000  # a fraction of a GPU is asked for in thousandths
MAX_GPUS = 64  # per container
_MIG_RE = re.compile(r"^([1-7])g\.(\d{1,4})gb$")
_GPU_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GPUS_KEYS = ("mig", "count")
_NVML_MODEL_RE = re.compile(r"\b([A-Z]{1,3}\d{1,4}[A-Z]{0,2})\b")
_VENDOR_WORDS = ("NVIDIA", "TESLA", "GEFORCE", "QUADRO", "RTX")


def mig_profile(profile: object) -> tuple[int, int]:
    """(compute slices, memory GB) of a MIG profile such as ``1g.18gb``; ValueError otherwise."""
    m = _MIG_RE.match(profile.strip().lower()) if isinstance(profile, str) else None
    if m is None:
        raise ValueError(
            f"MIG profile {profile!r} must look like 1g.18gb, 2g.35gb, 3g.71gb or 7g.141gb "
            "(compute slices 1-7, then the memory in GB)"
        )
    return int(m.group(1)), int(m.group(2))


def mig_share(profile: str) -> float:
    """The share of one GPU a MIG instance of ``profile`` counts as: its slices out of 7."""
    return mig_profile(profile)[0] / MIG_SLICES


def memory_size(text: str) -> tuple[float, str, str] | None:
    """``(number, unit, suffix)`` of a size such as ``4G``, ``512MiB``, ``384Gi``, ``100B`` or
    ``2048`` (unit and suffix in upper case, empty when absent); None for anything else."""
    m = _MEMORY_RE.match(text)
    if m is None:
        return None
    return float(m.group(1)), m.group(2).upper(), (m.group(3) or "").upper()


def gpu_model(name: str) -> str:
    """The GPU model a node is labelled with, from NVML's device name:
    ``NVIDIA H100 80GB HBM3`` -> ``H100``, ``Tesla V100-SXM2-16GB`` -> ``V100``,
    ``NVIDIA A100-SXM4-80GB`` -> ``A100``, ``NVIDIA GeForce RTX 4090`` -> ``RTX4090``,
    ``NVIDIA L40S`` -> ``L40S``. A name without a model number is kept whole (spaces removed)."""
    text = name.strip().upper().replace("-", " ").replace("_", " ")
    words = text.split()
    if "RTX" in words:  # GeForce / workstation cards: RTX 4090, RTX A6000
        i = words.index("RTX")
        if i + 1 < len(words):
            after = words[i + 1]
            return after if after[:1].isalpha() else "RTX" + after
    for word in words:
        if word in _VENDOR_WORDS:
            continue
        m = _NVML_MODEL_RE.fullmatch(word)
        if m is not None and not word.endswith("GB"):
            return m.group(1)
    return "".join(w for w in words if w not in _VENDOR_WORDS) or name.strip()


def parse_memory_mb(value: object) -> int:
    """'4G' -> 4096, '512M' -> 512, '1.5G' -> 1536; a bare number is MiB, ``B`` alone bytes."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a size like '4G' or '512M', not {value!r}")
    if isinstance(value, int | float):
        mb = float(value)
    else:
        size = memory_size(str(value))
        if size is None or size[2] == "I" or (not size[1] and size[2] == "IB"):
            raise ValueError(f"memory must be a size like '4G' or '512M', not {value!r}")
        number, unit, suffix = size
        mb = number * (_MIB_PER_BYTE if not unit and suffix == "B" else MIB_PER_UNIT[unit or "M"])
    if mb < 1:
        raise ValueError(f"memory must be at least 1M, not {value!r}")
    return round(mb)


def image_problem(image: str) -> str | None:
    """Why ``image`` is not an image reference (``[registry[:port]/]name[:tag][@digest]``,
    docker's grammar), or None. Whatever passes can never be read as an engine's option."""
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if len(name) > _NAME_MAX or not _IMAGE_RE.match(image):
        return (
            f"image {image!r} is not a valid image reference "
            "([registry[:port]/]name[:tag][@digest]: lowercase name parts, no spaces, "
            "not starting with '-')"
        )
    return None


def parse_user(user: str) -> tuple[int, int | None]:
    """(uid, gid or None) of a container user ``UID[:GID]``: ASCII digits only, each at most
    ``MAX_ID``; ValueError otherwise. ``"00:0"`` is (0, 0): callers compare numbers."""
    m = _USER_RE.match(user)
    ids = None if m is None else [int(g) for g in m.groups() if g is not None]
    if ids is None or any(i > MAX_ID for i in ids):
        raise ValueError(
            f"container.user must be UID[:GID] (numbers up to {MAX_ID}; no names), not {user!r}"
        )
    return ids[0], ids[1] if len(ids) > 1 else None


def format_user(uid: int, gid: int | None) -> str:
    return str(uid) if gid is None else f"{uid}:{gid}"


def canonical_user(user: str) -> str:
    """``user`` as numbers without leading zeros ("00:01000" -> "0:1000"); ValueError if it
    is not ``UID[:GID]``."""
    return format_user(*parse_user(user))


def format_memory(mb: int) -> str:
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"


def parse_duration_s(value: object) -> int:
    """'30m' -> 1800, '2h' -> 7200, 90 -> 90 (seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"a duration looks like '90s', '30m' or '2h', not {value!r}")
    m = _DUR_RE.match(str(value))
    if not m:
        raise ValueError(f"a duration looks like '90s', '30m' or '2h', not {value!r}")
    seconds = round(float(m.group(1)) * _DUR_UNITS_S[m.group(2).lower()])
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {value!r}")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ResourceSpec(_Strict):
    """Per-container request.

    ``gpus``: whole GPUs (``2``), a fraction of one GPU shared with other fractional apps
    (``0.25``, in thousandths), or MIG instances (``{mig: 1g.18gb, count: 1}``; then ``gpus``
    is the number of instances and ``mig`` their profile). ``gpu_type``: the GPU models the
    app may run on (``[H100, A100]``); empty: any.
    """

    cpus: float = Field(default=1.0, gt=0, le=1024)
    memory_mb: int = Field(default=2048, ge=1, alias="memory")
    gpus: float = Field(default=0, ge=0, le=MAX_GPUS)
    mig: str | None = None  # written as gpus: {mig: ..., count: ...}, never as a key
    gpu_type: tuple[str, ...] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _mig(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            return data
        if "mig" in data:
            raise ValueError(
                "write MIG instances as gpus: {mig: 1g.18gb, count: 1}, not as a mig key"
            )
        gpus = data.get("gpus")
        if not isinstance(gpus, Mapping):
            return data
        unknown = sorted(str(k) for k in set(gpus) - set(GPUS_KEYS))
        if unknown or "mig" not in gpus:
            raise ValueError(
                "gpus as a mapping asks for MIG instances: {mig: <profile>, count: <n>}; "
                + (f"unknown key(s) {unknown}" if unknown else "mig is missing")
            )
        count = gpus.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_GPUS:
            raise ValueError(f"gpus.count must be a whole number of MIG instances, not {count!r}")
        profile = gpus["mig"]
        mig_profile(profile)
        return {**data, "gpus": count, "mig": str(profile).strip().lower()}

    @field_validator("memory_mb", mode="before")
    @classmethod
    def _memory(cls, v: object) -> int:
        return parse_memory_mb(v)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError(f"gpus must be a number such as 1, 2 or 0.5, not {v!r}")
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"gpus must be a number such as 1, 2 or 0.5, not {v!r}") from None
        return v

    @field_validator("gpus")
    @classmethod
    def _whole_or_fraction(cls, v: float) -> float:
        if 0 < v < 1:
            milli = v * GPU_MILLI
            if abs(milli - round(milli)) > 1e-6:
                raise ValueError(
                    f"a fraction of a GPU is given in thousandths (0.001 to 0.999), not {v!r}"
                )
            return round(milli) / GPU_MILLI
        if not float(v).is_integer():
            raise ValueError(
                f"{v!r} GPUs: a fraction must be below 1 (one shared GPU); "
                "more than one GPU must be a whole number"
            )
        return int(v)

    @field_validator("gpu_type", mode="before")
    @classmethod
    def _gpu_type(cls, v: object) -> object:
        items = v.replace(",", " ").split() if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            return v
        out: list[str] = []
        for item in items:
            name = str(item).strip()
            if not _GPU_MODEL_RE.match(name):
                raise ValueError(f"{item!r} is not a GPU model name (such as H100, A100, T4)")
            if name.casefold() not in (o.casefold() for o in out):
                out.append(name)
        return tuple(out)

    @model_validator(mode="after")
    def _typed_needs_gpus(self) -> ResourceSpec:
        if self.gpu_type and self.gpus <= 0:
            raise ValueError(
                f"gpu_type {list(self.gpu_type)} asks for GPU models, but gpus is 0: "
                "ask for gpus too, or leave gpu_type out"
            )
        if self.mig is not None and self.gpus < 1:
            raise ValueError("MIG instances: gpus.count must be at least 1")
        return self

    @property
    def gpu_share(self) -> float:
        """The GPU share one container holds: its GPUs, its fraction, or its MIG instances'
        slices out of 7 of a GPU each."""
        if self.mig is not None:
            return round(self.gpus * mig_share(self.mig), 9)
        return self.gpus

    @property
    def gpus_value(self) -> int | float | dict[str, Any]:
        """``gpus`` as the native YAML writes it."""
        if self.mig is not None:
            return {"mig": self.mig, "count": int(self.gpus)}
        return int(self.gpus) if float(self.gpus).is_integer() else self.gpus


class DataBinding(_Strict):
    """A storage URL bound to a path inside the workspace."""

    url: str = Field(min_length=1)
    path: str = Field(min_length=1)
    overwrite: bool = False
    save_on_failure: bool = True  # outputs: a failed app's output goes to <url>.failed-<app id>

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme == "file" and (parsed.netloc or not parsed.path):
            raise ValueError(f"url {v!r}: write a file URL as file:///abs/path, or give a path")
        return v

    @field_validator("path")
    @classmethod
    def _relative_path(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or "\x00" in v:
            raise ValueError(f"path {v!r} must be relative to the workspace, without '..'")
        return str(p)

    @property
    def scheme(self) -> str:
        return url_scheme(self.url)


class NodeSelector(_Strict):
    """The reference's "request a specific server node" and "server-node blacklist"."""

    include: tuple[str, ...] = ()  # node names (IP or hostname) or ids; empty: any node
    exclude: tuple[str, ...] = ()
    strategy: Literal["pack", "spread"] = "pack"  # a gang's containers: best fit, or 1 a node


class Workspace(_Strict):
    path: str = "."
    exclude: tuple[str, ...] = ()


class Entry(_Strict):
    script: str = Field(min_length=1)
    args: tuple[str, ...] = ()

    @field_validator("script")
    @classmethod
    def _script(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"script {v!r} must be a path inside the workspace")
        if v.startswith(("-", "+")):
            raise ValueError(
                f"script {v!r} starts with {v[0]!r}, so an interpreter would read it as an "
                f"option; rename it, or write it as './{v}'"
            )
        return v

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(shlex.split(v))
        if isinstance(v, list | tuple):
            return tuple(str(a) for a in v)
        return v


class Mount(_Strict):
    """A host path bind-mounted into a container; only under the admin's ``allowed_mounts``."""

    host: str = Field(min_length=1)
    path: str = Field(min_length=1)  # inside the container
    read_only: bool = True

    @field_validator("host", "path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not PurePosixPath(v).is_absolute():
            raise ValueError(f"mount path {v!r} must be absolute")
        return v


class ContainerOptions(_Strict):
    """What an app asks of its container (runtime docker / podman). Every field is checked
    against the server's container policy at submit; a request it refuses is an error."""

    privileged: bool = False  # never granted: here so that asking gets a clear refusal
    network: Literal["default", "none", "host"] = "default"
    cap_add: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    user: str | None = None  # "UID[:GID]", kept canonical; default: the policy's user

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        """Numbers without leading zeros; anything else is left for the container policy to
        refuse (a 403 naming the rule, like every other container request)."""
        try:
            return None if v is None else canonical_user(v)
        except ValueError:
            return v

    @field_validator("cap_add", mode="before")
    @classmethod
    def _caps(cls, v: object) -> object:
        if isinstance(v, list | tuple):
            return tuple(str(c).upper().removeprefix("CAP_") for c in v)
        return v


class AppSpec(_Strict):
    name: str
    queue: str = "default"
    image: str | None = None
    runtime: Literal["process", "docker", "podman"] = "process"
    workspace: Workspace = Workspace()
    entry: Entry
    resources: ResourceSpec = ResourceSpec()
    num_containers: int = Field(default=1, ge=1, le=1024)
    env: dict[str, str] = Field(default_factory=dict)
    inputs: tuple[DataBinding, ...] = ()
    outputs: tuple[DataBinding, ...] = ()
    max_runtime_s: int | None = Field(default=None, alias="max_runtime")
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_attempts: int = Field(default=1, ge=1, le=100)  # runs on its own failures, in all
    nodes: NodeSelector = NodeSelector()
    container: ContainerOptions = ContainerOptions()
    # an array of apps (Slurm's --array: "0-999%50") and / or a parameter sweep (dlapp.arrays)
    array: str | None = None
    sweep: dict[str, tuple[str | int | float | bool, ...]] | None = None

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, str_strip_whitespace=True
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"name {v!r} must be 1-128 characters: letters, digits, spaces and ._:@+-"
            )
        return v

    @field_validator("image", mode="before")
    @classmethod
    def _no_image(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        problem = None if v is None else image_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str) -> str:
        if not _QUEUE_RE.match(v):
            raise ValueError(f"queue {v!r} must look like 'default' or 'root.team.sub'")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: object) -> object:
        if not isinstance(v, Mapping):
            return v
        out: dict[str, str] = {}
        for key, value in v.items():
            k = str(key)
            if not _ENV_RE.match(k):
                raise ValueError(f"env name {k!r} is not a valid variable name")
            if k in RESERVED_ENV or k.startswith(arrays.SWEEP_ENV_PREFIX):
                raise ValueError(f"env name {k!r} is set by dlapp and cannot be overridden")
            if isinstance(value, dict | list):
                raise ValueError(f"env {k} must be a string, not {type(value).__name__}")
            text = (
                ""
                if value is None
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
            if any(c in text for c in "\n\r\x00"):
                raise ValueError(
                    f"env {k}: a value may not hold a line break or NUL "
                    "(containers get their env from a file, one variable a line)"
                )
            out[k] = text
        return out

    @field_validator("array", mode="before")
    @classmethod
    def _array_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep(cls, v: object) -> object:
        if v is None:
            return None
        try:
            return arrays.check_sweep(v)
        except SpecError as exc:
            raise ValueError("; ".join(exc.problems)) from None

    @model_validator(mode="after")
    def _array(self) -> AppSpec:
        if self.array is not None:
            try:
                arrays.parse_array(self.array, with_sweep=bool(self.sweep))
            except SpecError as exc:
                raise ValueError("; ".join(exc.problems)) from None
        return self

    @property
    def is_array(self) -> bool:
        """An array or a sweep: submitted as one request that makes its members."""
        return self.array is not None or self.sweep is not None

    def member_spec(self) -> AppSpec:
        """What each member of this array runs: this spec without its array and sweep."""
        return self.model_copy(update={"array": None, "sweep": None})

    @field_validator("max_runtime_s", mode="before")
    @classmethod
    def _max_runtime(cls, v: object) -> int | None:
        return None if v is None else parse_duration_s(v)

    @field_validator("inputs")
    @classmethod
    def _inputs_do_not_overwrite(cls, v: tuple[DataBinding, ...]) -> tuple[DataBinding, ...]:
        if any(b.overwrite for b in v):
            raise ValueError("overwrite applies to outputs only")
        if not all(b.save_on_failure for b in v):
            raise ValueError("save_on_failure applies to outputs only")
        return v

    @field_validator("outputs")
    @classmethod
    def _distinct_outputs(cls, v: tuple[DataBinding, ...]) -> tuple[DataBinding, ...]:
        urls = [b.url for b in v]
        if len(set(urls)) != len(urls):
            raise ValueError("two outputs write to the same url")
        return v

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> AppSpec:
        """Validate a native-format dict; relative local paths resolve against ``base_dir``."""
        if not isinstance(data, Mapping):
            raise SpecError("the spec must be a mapping of keys to values")
        try:
            spec = cls.model_validate(dict(data))
        except ValidationError as exc:
            raise SpecError(_describe(exc)) from None
        return spec.resolved(base_dir) if base_dir is not None else spec

    @classmethod
    def from_yaml(cls, text: str, base_dir: Path | None = None) -> AppSpec:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"not valid YAML: {exc}") from None
        return cls.from_dict(data if data is not None else {}, base_dir)

    @classmethod
    def from_properties(cls, text: str, base_dir: Path | None = None) -> AppSpec:
        return cls.from_dict(properties_to_dict(text), base_dir)

    @classmethod
    def from_file(cls, path: Path) -> AppSpec:
        """Read a ``.properties`` or YAML spec; relative paths are relative to the file."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read {path}: {exc.strerror}") from None
        base = path.resolve().parent
        if path.suffix in PROPERTIES:
            return cls.from_properties(text, base)
        return cls.from_yaml(text, base)

    def to_dict(self) -> dict[str, Any]:
        """The native YAML form; ``from_dict(to_dict())`` gives back an equal spec."""
        return {
            "name": self.name,
            "queue": self.queue,
            "image": self.image,
            "runtime": self.runtime,
            "workspace": {"path": self.workspace.path, "exclude": list(self.workspace.exclude)},
            "entry": {"script": self.entry.script, "args": list(self.entry.args)},
            "resources": {
                "cpus": self.resources.cpus,
                "memory": format_memory(self.resources.memory_mb),
                "gpus": self.resources.gpus_value,
            }
            | ({"gpu_type": list(self.resources.gpu_type)} if self.resources.gpu_type else {}),
            "num_containers": self.num_containers,
            "env": dict(self.env),
            "inputs": [{"url": b.url, "path": b.path} for b in self.inputs],
            "outputs": [
                {
                    "url": b.url,
                    "path": b.path,
                    "overwrite": b.overwrite,
                    "save_on_failure": b.save_on_failure,
                }
                for b in self.outputs
            ],
            "max_runtime": self.max_runtime_s,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "nodes": {
                "include": list(self.nodes.include),
                "exclude": list(self.nodes.exclude),
                "strategy": self.nodes.strategy,
            },
            "container": self.container.model_dump(mode="json"),
        } | (
            ({"array": self.array} if self.array is not None else {})
            | ({"sweep": {k: list(v) for k, v in self.sweep.items()}} if self.sweep else {})
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def resolved(self, base_dir: Path) -> AppSpec:
        """Make the workspace path and local data URLs absolute (relative to ``base_dir``)."""

        def local(url: str) -> str:
            if url_scheme(url) != "file":
                return url
            path = Path(urlparse(url).path if url.startswith("file:") else url)
            return "file://" + str((base_dir / path).resolve())

        ws = Path(self.workspace.path)
        workspace = self.workspace.model_copy(update={"path": str((base_dir / ws).resolve())})
        inputs = tuple(b.model_copy(update={"url": local(b.url)}) for b in self.inputs)
        outputs = tuple(b.model_copy(update={"url": local(b.url)}) for b in self.outputs)
        return self.model_copy(
            update={"workspace": workspace, "inputs": inputs, "outputs": outputs}
        )


def url_scheme(url: str) -> str:
    """'file' for local paths and file:// URLs, else the URL's scheme ('hdfs', 's3', ...)."""
    scheme = urlparse(url).scheme
    return "file" if scheme in ("", "file") else scheme.lower()


# -- the reference format ---------------------------------------------------------------------

PROPERTIES = (".properties", ".ini")  # file suffixes read as a reference dl_app.properties

# [application] key -> native key (None: accepted and ignored, with the reason in IGNORED)
_APP_KEYS: dict[str, str | None] = {
    "appname": "name",
    "name": "name",
    "queue": "queue",
    "docker_image": "image",
    "image": "image",
    "runtime": "runtime",
    "user_dev_workspace_path": "workspace.path",
    "exclude": "workspace.exclude",
    "user_shell_script": "entry.script",
    "user_shell_args": "entry.args",
    "cpus": "resources.cpus",
    "memory": "resources.memory",
    "gpus": "resources.gpus",
    "gpu_type": "resources.gpu_type",
    "mig": "resources.gpus.mig",  # with gpus as the number of instances
    "num_containers": "num_containers",
    "max_runtime": "max_runtime",
    "priority": "priority",
    "max_attempts": "max_attempts",
    "include_nodes": "nodes.include",
    "exclude_nodes": "nodes.exclude",
    "placement": "nodes.strategy",
    "username": None,  # the user is the authenticated caller, never a spec field
}
_INPUT_KEYS = {"hdfs": "url", "url": "url", "input_path": "path"}
_OUTPUT_KEYS = {
    "hdfs": "url",
    "url": "url",
    "output_path": "path",
    "overwrite": "overwrite",
    "save_on_failure": "save_on_failure",
}
_SECTIONS = ("application", "env", "from_hdfs", "to_hdfs")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _hdfs_url(value: str) -> str:
    """``/user/tony/x/*`` in a ``hdfs=`` key means HDFS; a relative path stays local."""
    if "://" in value or not value.startswith("/"):
        return value
    return "hdfs://" + value


def properties_to_dict(text: str) -> dict[str, Any]:
    """Translate a reference ``dl_app.properties`` into the native dict form."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise SpecError(f"not a valid properties file: {exc.message}") from None
    problems: list[str] = []
    unknown_sections = [
        s
        for s in parser.sections()
        if s.split(".")[0] not in _SECTIONS
        or ("." in s and s.split(".")[0] not in ("from_hdfs", "to_hdfs"))
    ]
    if unknown_sections:
        problems.append(f"unknown section(s) {unknown_sections}; valid sections: {list(_SECTIONS)}")
    if not parser.has_section("application"):
        problems.append("missing the [application] section")
    out: dict[str, Any] = {}
    mig: str | None = None
    if parser.has_section("application"):
        for key, raw in parser.items("application"):
            target = _APP_KEYS.get(key.lower(), "?")
            if target == "?":
                problems.append(
                    f"unknown key {key!r} in [application]; valid keys: {sorted(_APP_KEYS)}"
                )
                continue
            if target is None:
                continue
            value: Any = _unquote(raw)
            if target in ("workspace.exclude", "nodes.include", "nodes.exclude"):
                value = shlex.split(value)
            if target == "resources.gpus.mig":
                mig = value
                continue
            _set_dotted(out, target, value)
        if mig is not None:  # mig=1g.18gb with gpus=<instances> (default 1)
            resources = out.setdefault("resources", {})
            count = str(resources.get("gpus", "1")).strip()
            if not count.isdigit():
                problems.append(f"with mig, gpus is the number of MIG instances, not {count!r}")
            else:
                resources["gpus"] = {"mig": mig, "count": int(count)}
    if parser.has_section("env"):
        out["env"] = {k: _unquote(v) for k, v in parser.items("env")}
    for prefix, keys, dest in (
        ("from_hdfs", _INPUT_KEYS, "inputs"),
        ("to_hdfs", _OUTPUT_KEYS, "outputs"),
    ):
        for section in sorted(s for s in parser.sections() if s.split(".")[0] == prefix):
            binding: dict[str, Any] = {}
            for key, raw in parser.items(section):
                target = keys.get(key.lower())
                if target is None:
                    problems.append(
                        f"unknown key {key!r} in [{section}]; valid keys: {sorted(keys)}"
                    )
                    continue
                value = _unquote(raw)
                if target == "url":
                    value = _hdfs_url(value)
                elif target in ("overwrite", "save_on_failure"):
                    value = _parse_bool(value, f"[{section}] {target}", problems)
                binding[target] = value
            out.setdefault(dest, []).append(binding)
    if problems:
        raise SpecError(problems)
    return out


def properties_username(text: str) -> str | None:
    """The ``username`` a reference ``dl_app.properties`` names, which dlapp ignores (an app
    runs as the user whose token launches it); None when it names none or cannot be read."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    for key, raw in parser.items("application") if parser.has_section("application") else ():
        if key.lower() == "username":
            return _unquote(raw) or None
    return None


def _parse_bool(value: str, what: str, problems: list[str]) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    problems.append(f"{what} must be true or false, not {value!r}")
    return False


def _set_dotted(out: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        _set_dotted(out.setdefault(head, {}), rest, value)
    else:
        out[head] = value


# -- error messages ---------------------------------------------------------------------------


def _valid_keys(model: type[BaseModel]) -> list[str]:
    hidden = {"mig"} if model is ResourceSpec else set()  # written inside gpus
    return sorted((f.alias or name) for name, f in model.model_fields.items() if name not in hidden)


_MODELS_AT: dict[str, type[BaseModel]] = {
    "": AppSpec,
    "resources": ResourceSpec,
    "workspace": Workspace,
    "entry": Entry,
    "nodes": NodeSelector,
    "inputs": DataBinding,
    "outputs": DataBinding,
    "container": ContainerOptions,
    "mounts": Mount,
}


def _describe(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            parent = next((p for p in reversed(loc[:-1]) if not p.isdigit()), "")
            model = _MODELS_AT.get(parent, AppSpec)
            section = f" in {parent}" if parent else ""
            problems.append(
                f"unknown key {loc[-1]!r}{section}; valid keys: {', '.join(_valid_keys(model))}"
            )
        elif err["type"] == "missing":
            problems.append(f"{where} is required")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
    return problems
