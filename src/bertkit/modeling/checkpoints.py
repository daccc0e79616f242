"""Checkpoint interop: Hugging Face directories and hub ids, Google TF checkpoints, HF-format saving.

Every source goes through one key map, `bertkit_name`, to the canonical names of bertkit's head
models (= Hugging Face's `BertFor*` names): encoder tensors under `bert.`, heads under `cls.`,
`classifier.`, `qa_outputs.`. A plain `BertModel` uses the same names without the `bert.` prefix.

Google's TF checkpoints are read without TensorFlow: the `.index` file of a tensor bundle is a
LevelDB-format table (sorted, prefix-compressed keys; values are BundleEntryProto messages saying
where each tensor's bytes sit in the `.data-NNNNN-of-NNNNN` shards), parsed here directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from bertkit.config import ModelConfig

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "model.pt")  # model.pt: a bertkit training checkpoint
ENCODER_PREFIXES = ("embeddings.", "encoder.")


# ---- locating a checkpoint ----------------------------------------------------------------------
def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name)) and not name.startswith((".", "~"))


def resolve_model_path(path_or_hub_id: str | Path) -> Path:
    """A local directory, file or TF checkpoint prefix as given; a hub id downloaded (and cached)
    with huggingface_hub when online. Offline or unknown ids give an error saying what to pass."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists() or Path(f"{path}.index").exists():
        return path
    name = str(path_or_hub_id)
    if not _looks_like_hub_id(name):
        raise FileNotFoundError(f"model path {name!r} does not exist")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=name, local_files_only=offline,
                                  allow_patterns=["*.json", "*.safetensors", "*.bin", "vocab.txt", "*.model"])
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises many types; all mean "not available"
        why = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
               else f"download failed: {type(err).__name__}: {err}")
        raise FileNotFoundError(
            f"model {name!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"({why}); pass a local directory holding config.json and model.safetensors "
            f"(or pytorch_model.bin / a TF bert_model.ckpt)") from None
    return Path(local)


def find_tf_prefix(path: Path) -> Path | None:
    """The TF checkpoint prefix (`.../bert_model.ckpt`) for a prefix, an .index file or a directory."""
    if path.name.endswith(".index") and path.is_file():
        return path.with_name(path.name[: -len(".index")])
    if Path(f"{path}.index").is_file():
        return path
    if path.is_dir():
        indexes = sorted(path.glob("*.ckpt*.index")) or sorted(path.glob("*.index"))
        indexes = [p for p in indexes if not p.name.endswith(".json")]
        if indexes:
            return indexes[-1].with_name(indexes[-1].name[: -len(".index")])
    return None


def find_weights(path: Path) -> tuple[str, Path]:
    """(format, file) of the weights at path: "safetensors", "bin", "sharded" or "tf"."""
    shard = re.fullmatch(r"(.+)\.data-\d{5}-of-\d{5}", path.name)
    if path.is_file() and shard and path.with_name(shard.group(1) + ".index").is_file():
        return "tf", path.with_name(shard.group(1))  # a TF data file: its checkpoint prefix
    if path.is_file() and not path.name.endswith(".index"):
        if path.name.endswith(".index.json"):
            return "sharded", path
        return ("safetensors" if path.suffix == ".safetensors" else "bin"), path
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                kind = "sharded" if name.endswith(".index.json") else name.rsplit(".", 1)[-1]
                return ("safetensors" if kind == "safetensors" else "bin" if kind == "pt" else kind), path / name
    prefix = find_tf_prefix(path)
    if prefix is not None:
        return "tf", prefix
    where = path if path.is_dir() else path.parent
    raise FileNotFoundError(f"no weights found in {where}: expected model.safetensors, pytorch_model.bin "
                            f"or bert_model.ckpt.* (the directory holds: "
                            f"{', '.join(sorted(p.name for p in where.iterdir())) or 'nothing'})")


def read_config(path: Path) -> ModelConfig:
    """config.json (HF) or bert_config.json (Google) beside the weights."""
    where = path if path.is_dir() else path.parent
    for name in ("config.json", "bert_config.json"):
        if (where / name).is_file():
            return ModelConfig.from_json_file(where / name)
    raise FileNotFoundError(f"no config.json or bert_config.json in {where}")


# ---- reading tensors ----------------------------------------------------------------------------
def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: cannot read safetensors file, it is truncated or corrupt ({err}); "
                         f"re-download or re-save it") from None


class NotLoaded:
    """Stands in for an object of a class a checkpoint pickles beside its weights (a DataLoader, a
    dataset class of the training script): accepts whatever unpickling hands it and runs no code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _load_pickle_tolerantly(file: Path) -> tuple[Any, list[str]]:
    """torch.load(weights_only=True) with the classes it refuses read as NotLoaded: a training
    checkpoint of NVIDIA's run_pretraining.py stopped before --max_steps pickles its DataLoader (and
    the script's own dataset class) beside the model, which the weights-only unpickler refuses and a
    full unpickle would import and run. No code of the file's is run either way: the unpickler still
    builds only tensors, containers and, for the refused names, NotLoaded. Returns (object, names)."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    if not names:
        raise ValueError("nothing to stand in for")
    with torch.serialization.safe_globals([(NotLoaded, name) for name in names]):
        return torch.load(file, map_location="cpu", weights_only=True), names


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    # Messages name the user's file, not the link to it in a directory made for it (nvidia_model).
    file = file.resolve() if file.is_symlink() else file
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle/zip errors of many kinds
        try:
            state, skipped = _load_pickle_tolerantly(file)
        except Exception:  # noqa: BLE001 - the first error says what is wrong with the file
            raise ValueError(f"{file}: cannot read PyTorch weights ({type(err).__name__}: {err}); the file "
                             f"is truncated, corrupt or holds more than tensors") from None
        log.warning("%s: holds objects beside the weights (%s); read the tensors only, without running the "
                    "file's code", file, ", ".join(skipped))
    # Training scripts wrap the weights: {"state_dict": ...} (Lightning and others), {"model": ...}
    # (NVIDIA DeepLearningExamples' run_pretraining.py/run_squad.py, beside "optimizer", "epoch" ...).
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a dict of tensors, found {type(state).__name__}")
    not_tensors = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{file}: expected a dict of tensors; {', '.join(map(str, not_tensors[:3]))} "
                         f"{'is not a tensor' if len(not_tensors) == 1 else f'and {len(not_tensors) - 1} more are not tensors'}")
    return state


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor | np.ndarray]:
    """Every tensor of a checkpoint under its name in the file (not yet mapped).
    path: a directory, a weights file, a sharded `*.index.json`, or a TF prefix / `.index` file."""
    kind, file = find_weights(Path(path))
    if kind == "safetensors":
        return dict(_load_safetensors(file))
    if kind == "bin":
        return _load_bin(file)
    if kind == "tf":
        return dict(read_tf_checkpoint(file))
    weight_map = json.loads(file.read_text(encoding="utf-8")).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{file}: sharded index without a 'weight_map' object")
    state: dict[str, torch.Tensor | np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = file.parent / shard
        if not shard_file.is_file():
            raise FileNotFoundError(f"{file} lists shard {shard!r} but {shard_file} does not exist")
        state.update(_load_safetensors(shard_file) if shard.endswith(".safetensors") else _load_bin(shard_file))
    return state


def list_tensors(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape without reading the values (TF: from the .index alone)."""
    kind, file = find_weights(Path(path))
    if kind == "tf":
        return {name: e.shape for name, e in read_tf_index(file).items()}
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{file}: cannot read safetensors file, it is truncated or corrupt ({err})") from None
    return {k: tuple(v.shape) for k, v in load_state_dict(path).items()}


# ---- the key map --------------------------------------------------------------------------------
_SKIP = re.compile(r"(^|[/.])(adam_[mv]|global_step|position_ids|token_type_ids)$|^_"
                   r"|(^|/)(Adam|adam)|/(beta[12]_power)$|^bad_steps$|^loss_scale")
_TF_HEADS = {  # TF names whose layout is already [out, in], or that have no `bert/` mirror
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    "output_weights": "classifier.weight",  # run_classifier.py fine-tuned checkpoints
    "output_bias": "classifier.bias",
    "cls/squad/output_weights": "qa_outputs.weight",  # run_squad.py fine-tuned checkpoints
    "cls/squad/output_bias": "qa_outputs.bias",
}


def bertkit_name(name: str) -> tuple[str | None, bool]:
    """The one key map: a checkpoint's tensor name -> (canonical name or None to skip, transpose?).

    Handles HF names with or without the `bert.` prefix, old `gamma`/`beta` LayerNorm names and
    Google TF names (`bert/encoder/layer_0/attention/self/query/kernel`, kernels stored [in, out])."""
    if _SKIP.search(name):
        return None, False
    if "/" in name:  # TensorFlow
        if name in _TF_HEADS:
            return _TF_HEADS[name], False
        transpose = name.endswith("/kernel")
        parts = []
        for part in name.split("/"):
            match = re.fullmatch(r"layer_(\d+)", part)
            parts.extend(["layer", match.group(1)] if match else [part])
        last = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(parts[-1], parts[-1])
        if parts[-1].endswith("_embeddings"):
            parts.append("weight")
        else:
            parts[-1] = last
        return ".".join(parts), transpose
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    # NVIDIA DeepLearningExamples fuses bias and activation into one module, `dense_act`, in the
    # intermediate layer, the pooler and the MLM transform: HF's `dense` (same weight and bias).
    name = name.replace(".dense_act.", ".dense.")
    if name.startswith(ENCODER_PREFIXES) or name.startswith("pooler."):
        name = "bert." + name
    if name == "cls.predictions.decoder.bias":  # HF's alias of cls.predictions.bias
        return "cls.predictions.bias", False
    return name, False


def to_bertkit_names(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Apply `bertkit_name` to every tensor; numpy arrays become torch tensors."""
    out: dict[str, torch.Tensor] = {}
    for raw, value in state_dict.items():
        name, transpose = bertkit_name(raw)
        if name is None:
            continue
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        if transpose:
            tensor = tensor.t().contiguous()
        if name in out and name == "cls.predictions.bias":
            continue  # decoder.bias and predictions.bias are the same tensor in HF files
        out[name] = tensor
    return out


# ---- loading into a model -----------------------------------------------------------------------
def _vocab_lines(directory: Path) -> int | None:
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        return None
    with vocab.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def check_consistency(config: ModelConfig, state: dict[str, torch.Tensor], source: Path) -> None:
    """Errors for a config or vocab.txt that does not describe these weights."""
    emb = state.get("bert.embeddings.word_embeddings.weight")
    where = source if source.is_dir() else source.parent
    if emb is not None:
        rows, width = emb.shape
        if width != config.hidden_size:
            raise ValueError(f"{where}: config says hidden_size={config.hidden_size} but the weights "
                             f"({source}) have word embeddings of shape {list(emb.shape)} (hidden size "
                             f"{width}); the config does not belong to these weights")
        if rows != config.vocab_size:
            raise ValueError(f"{where}: config says vocab_size={config.vocab_size} but the weights "
                             f"({source}) have word embeddings of shape {list(emb.shape)}")
        lines = _vocab_lines(where)
        # A vocab.txt shorter than the table is fine (tables are often padded to a multiple of 8,
        # e.g. 30528 rows for 30522 tokens); a longer one would produce ids with no embedding row.
        if lines is not None and lines > rows:
            raise ValueError(f"{where / 'vocab.txt'} has {lines} tokens but the word embeddings in "
                             f"{source} have only {rows} rows; the vocab does not belong to this model")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))}
    if layers and max(layers) + 1 != config.num_hidden_layers:
        raise ValueError(f"{where}: config says num_hidden_layers={config.num_hidden_layers} but the "
                         f"weights ({source}) hold {max(layers) + 1} layers")


def drop_vocab_padding(config: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    """NVIDIA DeepLearningExamples pads the word embeddings (and with them the MLM output) to a
    multiple of 8 rows for tensor cores, 30522 -> 30528, while its bert_config.json keeps
    vocab_size 30522. The padding rows are never looked up by a token id: they are dropped here, so
    the model has the tokenizer's size and its saved files load in transformers."""
    emb = state.get("bert.embeddings.word_embeddings.weight")
    padded = -(-config.vocab_size // 8) * 8
    if emb is None or emb.shape[0] == config.vocab_size or emb.shape[0] != padded:
        return
    for name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias", "cls.predictions.decoder.weight"):
        if name in state:
            state[name] = state[name][:config.vocab_size]


def uninitialised(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with CPU storage for its parameters but no initial values: built on the meta device,
    then given memory. For a model whose weights load_into fills from a checkpoint (it initialises
    the ones the checkpoint lacks): BERT-base's random init was 2.1 of the 2.4 s a load took."""
    with torch.device("meta"):
        model = build()
    return model.to_empty(device="cpu")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path,
              new_head_on_mismatch: bool = False, require_head: bool = False) -> None:
    """Copy canonical-named tensors into model. Missing encoder weights and shape mismatches are
    errors; missing head weights are logged as newly initialised; extra heads are logged and dropped.
    With new_head_on_mismatch, a task head whose shape differs (a checkpoint fine-tuned with another
    label set) is initialised anew instead — what fine-tuning on a new task wants. The model may be
    `uninitialised`: every tensor is either copied from `state` or given BERT's init here."""
    from bertkit.modeling.bert import BertModel, init_bert_parameter

    is_encoder = isinstance(model, BertModel)
    if is_encoder:
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    expected = model.state_dict()
    tied = {"cls.predictions.decoder.weight"} if getattr(model, "config", None) is None or \
        model.config.tie_word_embeddings else set()
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    encoder_missing = [k for k in missing
                       if k.removeprefix("bert.").startswith(ENCODER_PREFIXES)]
    if encoder_missing:
        raise ValueError(f"{source}: encoder weights missing from the checkpoint: "
                         f"{', '.join(encoder_missing[:5])}{' ...' if len(encoder_missing) > 5 else ''} "
                         f"({len(encoder_missing)} in all); is this a BERT checkpoint?")
    for name, tensor in list(state.items()):
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            is_head = not name.removeprefix("bert.").startswith(ENCODER_PREFIXES) and not name.startswith("bert.")
            if new_head_on_mismatch and is_head:
                log.warning("%s: %s has shape %s in %s, the task needs %s: initialised anew",
                            type(model).__name__, name, list(tensor.shape), source, list(expected[name].shape))
                del state[name]
                continue
            raise ValueError(f"{source}: tensor {name} has shape {list(tensor.shape)} in the file but the "
                             f"model (from its config) expects {list(expected[name].shape)}")
    head_missing = [k for k in missing if not k.removeprefix("bert.").startswith("pooler.")]
    if head_missing and require_head:
        # Scores from a randomly initialised head look like results (RTE accuracy 0.51, then 0.55).
        # The pooler is left out: token-level heads never read it and HF saves theirs without one.
        raise ValueError(f"{source}: no weights for the task head ({', '.join(head_missing)}): this checkpoint was "
                         f"not fine-tuned for the task; fine-tune it first (bertkit finetune) and pass that run "
                         f"as --model")
    if missing:
        log.warning("%s: newly initialised (not in %s): %s", type(model).__name__, source, ", ".join(missing))
    if unexpected:
        log.info("%s: unused weights in %s: %s", type(model).__name__, source, ", ".join(unexpected))
    loadable = {k: v for k, v in state.items() if k in expected}
    with torch.no_grad():
        for name, tensor in loadable.items():
            expected[name].copy_(tensor.to(expected[name].dtype))
    modules = dict(model.named_modules())
    config = getattr(model, "config", None)
    std = config.initializer_range if config is not None else ModelConfig().initializer_range
    for name in expected:
        if name not in loadable and name not in tied:
            owner, _, attribute = name.rpartition(".")
            init_bert_parameter(modules[owner], attribute, std)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_pretrained(cls: type[nn.Module], path_or_hub_id: str | Path, new_head_on_mismatch: bool = False,
                    require_head: bool = False, **config_overrides: Any) -> nn.Module:
    """Build `cls` from a checkpoint's config (with overrides) and load its weights; the model is
    returned in eval mode, as transformers returns it."""
    path = resolve_model_path(path_or_hub_id)
    kind, file = find_weights(path)
    config = read_config(file if kind != "tf" else file.parent)
    if "num_labels" in config_overrides and "id2label" not in config_overrides and config.id2label is not None \
            and len(config.id2label) != config_overrides["num_labels"]:
        config_overrides["id2label"] = None  # the checkpoint's label names belong to its old head
    if config_overrides:
        config = config.replace(**config_overrides)
    state = to_bertkit_names(load_state_dict(file))
    drop_vocab_padding(config, state)
    check_consistency(config, state, file)
    model = uninitialised(lambda: cls(config))
    load_into(model, state, file, new_head_on_mismatch=new_head_on_mismatch, require_head=require_head)
    return model.eval()  # as transformers returns it: dropout off until .train() (the trainer calls it)


# ---- saving -------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, directory: str | Path, tokenizer: Any = None, weights: bool = True) -> Path:
    """config.json (with `architectures`) + model.safetensors (+ tokenizer files) in HF format.
    The MLM decoder matrix is the word-embedding matrix; safetensors refuses shared storage and HF
    re-ties it on load, so it is not written. weights=False writes the rest only (a training
    checkpoint, whose weights are its model.pt)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: ModelConfig = model.config
    config.replace(architectures=[plain_class(model).__name__]).save(directory)
    if not weights:
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        return directory
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if k != "cls.predictions.decoder.weight" or not config.tie_word_embeddings}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def plain_class(model: nn.Module) -> type:
    """The model's own class: FSDP2's fully_shard swaps it for a subclass of (FSDPModule, class)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


# ---- Google TF checkpoints ----------------------------------------------------------------------
_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
              9: np.int64, 10: np.bool_, 19: np.float16}
_TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB table magic number, last 8 bytes of the file


@dataclass
class TFEntry:
    """Where one tensor lives in a TF bundle (the fields of BundleEntryProto that matter)."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) for every field of a protobuf message: ints for varint/fixed fields,
    bytes for length-delimited ones (sub-messages)."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos: pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def _bundle_entry(buf: bytes) -> TFEntry:
    dtype = shard = offset = size = 0
    shape: list[int] = []
    for number, value in _proto_fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:  # TensorShapeProto: repeated Dim (field 2) with size (field 1)
            for n, dim in _proto_fields(value):
                if n == 2:
                    shape.append(next((v for k, v in _proto_fields(dim) if k == 1), 0))
        elif number == 3:
            shard = value
        elif number == 4:
            offset = value
        elif number == 5:
            size = value
        elif number == 7:
            raise ValueError("partitioned (sliced) TF variables are not supported")
    return TFEntry(dtype=dtype, shape=tuple(shape), shard_id=shard, offset=offset, size=size)


def _block_entries(data: bytes, handle: tuple[int, int], file: Path) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one table block. Keys share a prefix with the previous key:
    each entry is varint shared, varint non_shared, varint value_len, key suffix, value."""
    offset, size = handle
    if offset + size + 5 > len(data):
        raise ValueError(f"{file}: block at offset {offset} (size {size}) runs past the end of the file "
                         f"({len(data)} bytes); the index is truncated")
    if data[offset + size] != 0:
        raise ValueError(f"{file}: compressed table blocks (type {data[offset + size]}) are not supported")
    block = data[offset: offset + size]
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos: pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos: pos + value_len]))
        pos += value_len
    return entries


def _read_tf_table(prefix: str | Path) -> tuple[dict[int, Any], dict[str, TFEntry]]:
    """Parse `<prefix>.index` -> (BundleHeaderProto fields, tensor name -> TFEntry in file order).

    Layout (LevelDB table): data blocks, a metaindex block, an index block whose values are
    BlockHandles (varint offset, varint size) of the data blocks, then a 48-byte footer holding the
    metaindex and index handles and the magic number."""
    prefix = Path(prefix)
    file = prefix if prefix.name.endswith(".index") else Path(f"{prefix}.index")
    if not file.is_file():
        raise FileNotFoundError(f"TF checkpoint index {file} does not exist")
    data = file.read_bytes()
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise ValueError(f"{file}: not a TF checkpoint index (no table magic number in its last 8 bytes)")
    footer = data[-48:]
    _, pos = _varint(footer, 0)  # metaindex offset
    _, pos = _varint(footer, pos)  # metaindex size
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    header: dict[int, Any] = {}
    entries: dict[str, TFEntry] = {}
    for _, handle in _block_entries(data, (index_offset, index_size), file):
        block_offset, p = _varint(handle, 0)
        block_size, _ = _varint(handle, p)
        for key, value in _block_entries(data, (block_offset, block_size), file):
            if key == b"":  # BundleHeaderProto: num_shards (1), endianness (2: 1 = big), version (3)
                header = dict(_proto_fields(value))
                if header.get(2, 0) == 1:
                    raise ValueError(f"{file}: big-endian TF checkpoints are not supported")
                continue
            entries[key.decode("utf-8")] = _bundle_entry(value)
    return header, entries


def read_tf_index(prefix: str | Path) -> dict[str, TFEntry]:
    """The tensors listed in `<prefix>.index` (no TensorFlow, no .data file needed)."""
    return _read_tf_table(prefix)[1]


def read_tf_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a TF bundle by its TF name (values as stored: kernels [in, out])."""
    prefix = Path(prefix)
    if prefix.name.endswith(".index"):
        prefix = prefix.with_name(prefix.name[: -len(".index")])
    header, entries = _read_tf_table(prefix)
    num_shards = int(header.get(1, 1))
    shards: dict[int, np.memmap] = {}
    out: dict[str, np.ndarray] = {}
    for name, entry in entries.items():
        if entry.shard_id not in shards:
            data_file = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
            if not data_file.is_file():
                raise FileNotFoundError(f"TF checkpoint data file missing: expected {data_file} beside "
                                        f"{prefix}.index (the .index lists tensors; their values live in "
                                        f"the .data file)")
            shards[entry.shard_id] = np.memmap(data_file, dtype=np.uint8, mode="r")
        if entry.dtype not in _TF_DTYPES:
            log.info("skipping TF tensor %s of unsupported dtype %d", name, entry.dtype)
            continue
        shard = shards[entry.shard_id]
        if entry.offset + entry.size > shard.size:
            raise ValueError(f"{prefix}: tensor {name} needs bytes {entry.offset}..{entry.offset + entry.size} "
                             f"but the data file has only {shard.size}; it is truncated")
        dtype = np.dtype(_TF_DTYPES[entry.dtype]).newbyteorder("<")
        raw = np.frombuffer(shard[entry.offset: entry.offset + entry.size].tobytes(), dtype=dtype)
        if raw.size != int(np.prod(entry.shape, dtype=np.int64)):
            raise ValueError(f"{prefix}: tensor {name} has {raw.size} values but shape {list(entry.shape)}")
        out[name] = raw.reshape(entry.shape).astype(dtype.newbyteorder("="))
    return out


# ---- info and convert ---------------------------------------------------------------------------
def _heads_present(names: set[str]) -> list[str]:
    heads = []
    for label, prefix in (("pooler", "bert.pooler."), ("mlm", "cls.predictions."),
                          ("nsp", "cls.seq_relationship."), ("classifier", "classifier."),
                          ("qa_outputs", "qa_outputs.")):
        if any(n.startswith(prefix) for n in names):
            heads.append(label)
    return heads


def model_info(path_or_hub_id: str | Path) -> dict[str, Any]:
    """Config and weights summary; for TF checkpoints it needs only the .index file."""
    path = resolve_model_path(path_or_hub_id)
    kind, file = find_weights(path)
    config = read_config(file if kind != "tf" else file.parent)
    shapes = list_tensors(file)
    mapped = {}
    for raw, shape in shapes.items():
        name, transpose = bertkit_name(raw)
        if name is not None:
            mapped[name] = tuple(reversed(shape)) if transpose else shape
    # BERT's MLM decoder weight is the word embedding matrix (tied); .bin files store it twice.
    counted = {n: s for n, s in mapped.items()
               if not (n == "cls.predictions.decoder.weight" and "bert.embeddings.word_embeddings.weight" in mapped)}
    return {
        "path": str(path), "format": kind, "weights": str(file),
        "architectures": config.architectures,
        "layers": config.num_hidden_layers, "hidden": config.hidden_size,
        "heads": config.num_attention_heads, "intermediate": config.intermediate_size,
        "vocab": config.vocab_size, "max_positions": config.max_position_embeddings,
        "hidden_act": config.hidden_act,
        "parameters": int(sum(int(np.prod(s, dtype=np.int64)) for s in counted.values())),
        "tensors": len(counted), "heads_present": _heads_present(set(mapped)),
    }


def _first_few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def convert_class(heads: list[str], architectures: list[str] | None) -> type[nn.Module]:
    """The model class that keeps every head a checkpoint holds: the class its config names when
    the weights have that class's head, else the one the heads imply."""
    from bertkit.modeling import heads as H
    from bertkit.modeling.bert import BertModel

    needs: dict[type[nn.Module], set[str]] = {
        H.BertForPreTraining: {"mlm", "nsp"}, H.BertForMaskedLM: {"mlm"},
        H.BertForSequenceClassification: {"classifier", "pooler"}, H.BertForTokenClassification: {"classifier"},
        H.BertForMultipleChoice: {"classifier", "pooler"}, H.BertForPolyphone: {"classifier"},
        H.BertForQuestionAnswering: {"qa_outputs"}, BertModel: set()}
    by_name = {cls.__name__: cls for cls in needs}
    for name in architectures or []:
        if name in by_name and needs[by_name[name]] <= set(heads):
            return by_name[name]
    if "qa_outputs" in heads:
        return H.BertForQuestionAnswering
    if "classifier" in heads:  # Google's run_classifier.py heads have a pooler; token heads have none
        return H.BertForSequenceClassification if "pooler" in heads else H.BertForTokenClassification
    if "mlm" in heads:
        return H.BertForPreTraining if "nsp" in heads else H.BertForMaskedLM
    return BertModel


def convert(src: str | Path, dst: str | Path, src_format: str | None = None) -> Path:
    """Any supported checkpoint -> a HF-format directory (config.json, model.safetensors, tokenizer
    files). The model class keeps every head found (`convert_class`); a tensor the class has no
    place for, or one it would have to initialise, is an error: convert copies weights, it never
    makes new ones."""
    from bertkit.tokenization import Tokenizer

    path = resolve_model_path(src)
    kind, file = find_weights(path)
    if src_format is not None and (src_format == "tf") != (kind == "tf"):
        raise ValueError(f"--from {src_format} but {src} holds a {kind} checkpoint ({file})")
    state = to_bertkit_names(load_state_dict(file))
    config = read_config(file if kind != "tf" else file.parent)
    cls = convert_class(_heads_present(set(state)), config.architectures)
    model = uninitialised(lambda: cls(config))
    expected = set(model.state_dict())
    names = {k.removeprefix("bert.") for k in state} if cls.__name__ == "BertModel" else set(state)
    tied = {"cls.predictions.decoder.weight"} if config.tie_word_embeddings else set()
    unused, missing = sorted(names - expected), sorted(expected - names - tied)
    problems = ([f"{len(unused)} tensors would be dropped ({_first_few(unused)})"] if unused else []) + \
        ([f"{len(missing)} would be newly initialised ({_first_few(missing)})"] if missing else [])
    if problems:
        raise ValueError(f"{file}: as {cls.__name__}, {'; '.join(problems)}; convert copies a checkpoint's "
                         f"weights exactly and makes none up")
    drop_vocab_padding(config, state)
    check_consistency(config, state, file)
    load_into(model, state, file)
    dst = Path(dst)
    save_pretrained(model, dst)
    where = file.parent if kind in ("tf", "sharded") or file.is_file() else file
    if (where / "vocab.txt").is_file() or (where / "tokenizer.json").is_file():
        # Saved, not copied: a Google checkpoint has only vocab.txt, and without tokenizer_config.json
        # transformers lowercases, which is wrong for a cased vocab.
        try:
            tokenizer = Tokenizer.from_pretrained(where)
        except ValueError as err:
            log.warning("%s: tokenizer files copied as they are (%s)", where, err)
            for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (where / name).is_file() and where.resolve() != dst.resolve():
                    shutil.copyfile(where / name, dst / name)
        else:
            tokenizer.save_pretrained(dst)
    return dst
