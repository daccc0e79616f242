"""bertkit: BERT pre-training, domain adaptation and fine-tuning.

    from bertkit import Tokenizer, BertModel
    tok = Tokenizer.from_pretrained("path/or/hub-id")
    model = BertModel.from_pretrained("path/or/hub-id").eval()
    out = model(**tok(["a sentence", "another"]))   # out.last_hidden_state [B,T,H]
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use so that `import bertkit` stays cheap (the CLI imports only what it runs).
_EXPORTS = {
    "Tokenizer": "bertkit.tokenization",
    "ModelConfig": "bertkit.config",
    "TrainConfig": "bertkit.config",
    "BertModel": "bertkit.modeling.bert",
    "BertForPreTraining": "bertkit.modeling.heads",
    "BertForSequenceClassification": "bertkit.modeling.heads",
    "BertForTokenClassification": "bertkit.modeling.heads",
    "BertForQuestionAnswering": "bertkit.modeling.heads",
    "BertForMultipleChoice": "bertkit.modeling.heads",
    "BertForPolyphone": "bertkit.modeling.heads",
    "Predictor": "bertkit.commands.predict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bertkit' has no attribute {name!r}")
