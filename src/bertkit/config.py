"""Typed configuration: the model shape (Hugging Face `config.json` compatible) and the training run.

Every field has a default and a one-line doc; validation happens in `__post_init__` so a bad value
fails where it is made, with the name of the field and what would be valid.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish")
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclass
class ModelConfig:
    """Shape of a BERT encoder. Field names are those of Hugging Face's `BertConfig`."""

    vocab_size: int = 30522  # rows of the word-embedding matrix
    hidden_size: int = 768  # width of every token vector
    num_hidden_layers: int = 12  # encoder layers
    num_attention_heads: int = 12  # heads per attention layer; must divide hidden_size
    intermediate_size: int = 3072  # width of the feed-forward inner layer
    hidden_act: str = "gelu"  # "gelu" is exact erf GELU; gelu_new/gelu_pytorch_tanh the tanh approximation
    hidden_dropout_prob: float = 0.1  # dropout after embeddings, attention output and FFN output
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # longest sequence the position table covers
    type_vocab_size: int = 2  # segment (token type) ids: A/B
    initializer_range: float = 0.02  # std of the truncated-normal init
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BERT uses 1e-12)
    pad_token_id: int = 0  # id of [PAD]; its embedding row is zeroed at init
    classifier_dropout: float | None = None  # dropout before task heads; None -> hidden_dropout_prob
    # Head-related fields that Hugging Face keeps in config.json too.
    num_labels: int = 2  # outputs of a classification head
    problem_type: str | None = None  # "regression" | "single_label_classification" | "multi_label_classification"
    id2label: dict[int, str] | None = None  # class index -> label name
    architectures: list[str] | None = None  # HF class names this checkpoint holds
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of config.json, written back unchanged

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; pick a head count that divides it")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"ModelConfig.hidden_act={self.hidden_act!r} is not supported; "
                             f"valid: {', '.join(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def tie_word_embeddings(self) -> bool:
        """Whether the MLM decoder is the word-embedding matrix (BERT's default; kept in `extra`)."""
        return bool(self.extra.get("tie_word_embeddings", True))

    # ---- Hugging Face config.json / Google bert_config.json ------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a HF `config.json` or Google `bert_config.json` dict; unknown keys go to `extra`."""
        data = dict(data)
        model_type = data.get("model_type")
        if model_type not in (None, "bert"):
            raise ValueError(f"config has model_type={model_type!r}; bertkit reads BERT checkpoints "
                             f"(model_type 'bert') only")
        foreign = [a for a in data.get("architectures") or [] if not str(a).startswith("Bert")]
        if foreign:
            raise ValueError(f"config has architectures={foreign}; bertkit reads BERT checkpoints only")
        positions = data.get("position_embedding_type", "absolute")
        if positions not in (None, "absolute"):
            # Loading it as absolute would run without the distance embeddings the model was trained with.
            raise ValueError(f"config has position_embedding_type={positions!r}; bertkit implements absolute "
                             f"position embeddings only")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        if "label2id" in data and "id2label" not in kwargs:
            kwargs["id2label"] = {v: k for k, v in data["label2id"].items()}
        data.pop("label2id", None)
        # HF writes num_labels implicitly through id2label.
        if kwargs.get("id2label") and "num_labels" not in kwargs:
            kwargs["num_labels"] = len(kwargs["id2label"])
        return cls(**kwargs, extra=data)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The dict written as Hugging Face `config.json` (loadable by `transformers.BertConfig`)."""
        # The weights are written in the model's own dtype, whatever the source file's was: a copied
        # "dtype": "float16" made transformers load fp32 weights as fp16.
        out: dict[str, Any] = {k: v for k, v in self.extra.items()
                               if k not in ("transformers_version", "_name_or_path", "dtype", "torch_dtype")}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in ("problem_type", "id2label", "architectures", "classifier_dropout"):
                continue
            out[f.name] = value
        out["model_type"] = "bert"
        if self.id2label is not None:
            out["id2label"] = {str(k): v for k, v in self.id2label.items()}
            out["label2id"] = {v: k for k, v in self.id2label.items()}
        out.setdefault("position_embedding_type", "absolute")
        return out

    def to_google_dict(self) -> dict[str, Any]:
        """The dict of Google's `bert_config.json`."""
        keys = ("attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
                "initializer_range", "intermediate_size", "max_position_embeddings",
                "num_attention_heads", "num_hidden_layers", "type_vocab_size", "vocab_size")
        return {k: getattr(self, k) for k in keys}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Presets are data. Shapes from Turc et al. 2019 ("Well-Read Students Learn Better", the
# google-research/bert small-model release: L/H with A = H/64, I = 4H) and Devlin et al. 2019
# (BERT-base L12/H768, BERT-large L24/H1024/A16).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A ModelConfig from a preset name (tiny|mini|small|medium|base|large) or a config.json path."""
    if name in PRESETS:
        return ModelConfig(**{**PRESETS[name], **overrides})
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return ModelConfig.from_json_file(path).replace(**overrides)
    raise ValueError(f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
                     f"config.json file")


PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "lamb", "bertadam")
SCHEDULES = ("linear", "constant", "cosine", "poly")
RESIDUAL_DTYPES = ("fp32", "bf16")  # dtype of the hidden states between sublayers under autocast


@dataclass
class TrainConfig:
    """One training run (fine-tuning or pre-training). The CLI maps its flags onto these fields."""

    output_dir: str = "runs/out"  # run directory: model, logs, checkpoints
    epochs: float = 3.0  # passes over the training data (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps; > 0 overrides epochs
    stop_at_step: int = 0  # end the run after this optimizer step, the lr schedule still that of the whole run (0: at its end)
    lr: float = 5e-5  # peak learning rate
    batch_size: int = 32  # examples per device per micro-step
    eval_batch_size: int = 128  # examples per device in evaluation
    grad_accum: int = 1  # micro-steps per optimizer step
    warmup_ratio: float = 0.0  # fraction of steps with linear warmup
    warmup_steps: int = 0  # warmup steps; > 0 overrides warmup_ratio
    schedule: str = "linear"  # linear | constant | cosine | poly (after warmup; poly: NVIDIA's (1 - step/total)^0.5)
    weight_decay: float = 0.01  # AdamW decay; never applied to biases and LayerNorm weights
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    adam_eps: float = 1e-6  # AdamW epsilon (BERT uses 1e-6)
    optimizer: str = "adamw"  # adamw | lamb | bertadam (the original BERT scripts' Adam: no bias correction)
    max_grad_norm: float = 1.0  # clip total gradient norm; 0 disables
    clip_per_tensor: bool = False  # clip each tensor's gradient norm to max_grad_norm apart (pytorch-pretrained-bert's BertAdam)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a dynamic loss scaler)
    seed: int = 42  # seeds init, data order and dropout: the same seed gives the same run
    eval_every: str = "epoch"  # "epoch", a step count, "end" (once, after the last step) or "none"
    save_every: int = 0  # checkpoint every N optimizer steps (0: only at eval points and the end)
    keep_checkpoints: int = 2  # step checkpoints kept on disk (the best model is kept apart)
    early_stopping_patience: int = 0  # stop after this many evaluations without a better main metric (0: never)
    best_metric: str = ""  # dev metric that picks the best model and counts for early stopping ("": the task's)
    keep_best: bool = True  # the run directory gets the best evaluated model; False: the last one
    resume: bool = False  # continue from the latest complete checkpoint in output_dir
    overwrite_output_dir: bool = False  # a fresh run may delete the checkpoints an earlier run left there
    group_by_length: bool = False  # sample batches of similar length to cut padding
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" adds CUDA graphs (bucketed token counts)
    attn_backend: str = "auto"  # attention path (modeling/attention.py BACKENDS); "varlen_dropout": flash varlen with dropout
    residual_dtype: str = "fp32"  # fp32 | bf16: hidden states between sublayers under autocast (bf16 needs precision bf16)
    attention_dropout: float | None = None  # overrides the model's attention_probs_dropout_prob (saved with it)
    fsdp: bool = False  # shard weights, gradients and optimizer state across processes (FSDP2)
    num_workers: int = -1  # DataLoader worker processes; -1: 4 on CUDA (collate and masking off the GPU's thread), 0 on CPU
    log_every: int = 10  # optimizer steps between log lines
    progress: bool = True  # show a progress bar

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.epochs < 0:
            raise ValueError("--max-steps and --epochs must not be negative")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ValueError("nothing to train: give --epochs > 0 or --max-steps > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        from bertkit.modeling.attention import BACKENDS

        if self.attn_backend not in BACKENDS:
            raise ValueError(f"--attn-backend {self.attn_backend!r} is not one of {', '.join(BACKENDS)}")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(f"--residual-dtype {self.residual_dtype!r} is not one of {', '.join(RESIDUAL_DTYPES)}")
        if self.residual_dtype == "bf16" and self.precision != "bf16":
            raise ValueError(f"--residual-dtype bf16 needs --precision bf16 (got --precision {self.precision}): "
                             f"the residual stream is kept in the autocast dtype")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"--attention-dropout must be in [0, 1), got {self.attention_dropout}")
        ev = str(self.eval_every)
        if ev not in ("epoch", "end", "none") and not (ev.isdigit() and int(ev) > 0):
            raise ValueError(f"--eval-every {ev!r}: expected 'epoch', a positive step count, 'end' or 'none'")
        self.eval_every = ev
        if self.early_stopping_patience < 0:
            raise ValueError(f"--early-stopping-patience must be >= 0 (0: off), got {self.early_stopping_patience}")
        if self.early_stopping_patience and self.eval_every in ("none", "end"):
            raise ValueError(f"--early-stopping-patience counts evaluations, and --eval-every {self.eval_every} "
                             f"evaluates {'nothing' if self.eval_every == 'none' else 'once, at the end'}; evaluate "
                             f"every epoch or every N steps")
        if not self.keep_best and self.early_stopping_patience:
            raise ValueError("--early-stopping-patience stops at the best model so far, and --keep-last keeps the "
                             "last one; drop one of them")
        if self.best_metric and self.eval_every == "none":
            raise ValueError(f"--best-metric {self.best_metric} picks the best of the evaluations, and --eval-every none "
                             f"evaluates nothing; evaluate every epoch or every N steps")
        if self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.num_workers < -1:
            raise ValueError(f"--num-workers must be >= 0, or -1 for the default (4 on CUDA, 0 on CPU), "
                             f"got {self.num_workers}")
        if self.log_every < 1:
            raise ValueError(f"--log-every must be >= 1 (optimizer steps between log lines), got {self.log_every}")
        for name in ("save_every", "warmup_steps", "stop_at_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "adam_eps"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.clip_per_tensor and self.fsdp:
            raise ValueError("--clip-per-tensor with --fsdp: each process holds a shard of every tensor, so a "
                             "tensor's gradient norm is not known to any one of them; drop one of the two")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
