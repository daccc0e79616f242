"""`bertkit predict --input` and `bertkit.Predictor`: new text, one example per line, predicted by a
fine-tuned run of every task (runs of 1 step of a tiny BERT on slices of the real data: what is checked
is the reading, the alignment of inputs and predictions, and the records, not accuracy)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from bertkit.cli import main


def cli(argv: list[str], stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def finetune(model: Path, out: Path, *args: str) -> Path:
    code, _, err = cli(["finetune", "--model", str(model), "--output-dir", str(out), "--max-steps", "1",
                        "--batch-size", "8", "--device", "cpu", "--no-progress", "--eval-every", "none", *args])
    assert code == 0, err
    return out


def head_lines(source: Path, target: Path, count: int) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(source.read_text(encoding="utf-8-sig").splitlines()[:count]) + "\n", encoding="utf-8")
    return target


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_sentence_classification_and_pairs(shared_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    glue = shared_dir / "data" / "glue"
    sst2 = tmp_path / "SST-2"
    head_lines(glue / "SST-2" / "train.tsv", sst2 / "train.tsv", 33)
    head_lines(glue / "SST-2" / "dev.tsv", sst2 / "dev.tsv", 9)
    run = finetune(tiny_model_dir, tmp_path / "sst2", "--task", "sst2", "--data-dir", str(sst2))
    code, out, err = cli(["info", str(run)])  # what a run was fine-tuned for, before predicting with it
    assert code == 0 and "task           sst2" in out and "labels         0, 1" in out
    code, out, err = cli(["info", str(run), "--json"])
    assert json.loads(out)["task"] == "sst2" and json.loads(out)["labels"] == ["0", "1"]
    # The dev sentences as new text get the labels the split's own prediction file has.
    code, _, err = cli(["predict", "--model", str(run), "--data-dir", str(sst2), "--split", "dev",
                        "--output", str(tmp_path / "dev.tsv"), "--device", "cpu"])
    assert code == 0, err
    from_split = [row.split("\t")[1] for row in (tmp_path / "dev.tsv").read_text().splitlines()[1:]]
    sentences = [row.split("\t")[0] for row in (sst2 / "dev.tsv").read_text().splitlines()[1:]]
    (tmp_path / "new.txt").write_text("\n".join(sentences[:4]) + "\n\n" + "\n".join(sentences[4:]) + "\n")
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "new.txt"), "--device", "cpu"])
    assert code == 0, err
    got = records(out)
    assert [r["text"] for r in got] == sentences and [r["prediction"] for r in got] == from_split
    assert [r["id"] for r in got] == [str(i) for i in range(8)]
    assert all(set(r["probabilities"]) == {"0", "1"} and abs(sum(r["probabilities"].values()) - 1) < 1e-5
               and max(r["probabilities"], key=r["probabilities"].get) == r["prediction"] for r in got)
    # Standard input, JSON lines with ids, and a file as --output.
    code, _, err = cli(["predict", "--model", str(run), "--input", "-", "--output", str(tmp_path / "p.jsonl"),
                        "--device", "cpu"], stdin='{"id": "r1", "text": "a gorgeous film"}\nflat and dull\n',
                       monkeypatch=monkeypatch)
    assert code == 0, err
    assert [r["id"] for r in records((tmp_path / "p.jsonl").read_text())] == ["r1", "1"]
    code, _, err = cli(["predict", "--model", str(run), "--input", "-", "--device", "cpu"],
                       stdin="one text\ta second\n", monkeypatch=monkeypatch)
    assert code == 1 and "stdin:1: task sst2 reads one text, but the line holds two" in err

    rte = tmp_path / "RTE"
    head_lines(glue / "RTE" / "train.tsv", rte / "train.tsv", 17)
    run = finetune(tiny_model_dir, tmp_path / "rte", "--task", "rte", "--data-dir", str(rte))
    (tmp_path / "pairs.txt").write_text("A man plays a guitar.\tA man plays music.\nIt rains.\n")
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "pairs.txt"), "--device", "cpu"])
    assert code == 1 and "pairs.txt:2: task rte reads a pair of texts" in err
    (tmp_path / "pairs.txt").write_text("A man plays a guitar.\tA man plays music.\n")
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "pairs.txt"), "--device", "cpu"])
    assert code == 0, err
    (record,) = records(out)
    assert record["text_pair"] == "A man plays music." and record["prediction"] in ("entailment", "not_entailment")

    stsb = tmp_path / "STS-B"
    head_lines(glue / "STS-B" / "train.tsv", stsb / "train.tsv", 17)
    run = finetune(tiny_model_dir, tmp_path / "stsb", "--task", "stsb", "--data-dir", str(stsb))
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "pairs.txt"), "--device", "cpu"])
    assert code == 0, err
    (record,) = records(out)
    assert isinstance(record["prediction"], float) and 0.0 <= record["prediction"] <= 5.0
    assert "probabilities" not in record


def test_ner_squad_multiple_choice_and_aspects(shared_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    data = shared_dir / "data"
    conll = tmp_path / "conll"
    head_lines(data / "conll2003" / "train.txt", conll / "train.txt", 120)
    head_lines(data / "conll2003" / "valid.txt", conll / "valid.txt", 40)
    run = finetune(tiny_model_dir, tmp_path / "ner", "--task", "conll2003", "--data-dir", str(conll))
    (tmp_path / "sentences.txt").write_text("EU rejects German call to boycott British lamb .\n"
                                            '{"id": "s2", "tokens": ["Peter", "Blackburn"]}\n')
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "sentences.txt"),
                          "--device", "cpu"])
    assert code == 0, err
    first, second = records(out)
    assert first["tokens"][0] == "EU" and len(first["tags"]) == 9 and second["id"] == "s2"
    for record in (first, second):
        for entity in record["entities"]:
            assert entity["text"] == " ".join(record["tokens"][entity["start"]:entity["end"]])
            assert record["tags"][entity["start"]] == f"B-{entity['type']}"  # well-formed IOB2, as conlleval reads it
            assert all(tag == f"I-{entity['type']}" for tag in record["tags"][entity["start"] + 1:entity["end"]])
        assert sum(tag.startswith("B-") for tag in record["tags"]) == len(record["entities"])

    squad = json.loads((data / "squad_v1.1" / "dev-v1.1.json").read_text(encoding="utf-8"))
    small = {"version": "1.1", "data": squad["data"][:1]}
    (tmp_path / "squad.json").write_text(json.dumps(small))
    run = finetune(tiny_model_dir, tmp_path / "squad", "--task", "squad", "--train-file", str(tmp_path / "squad.json"),
                   "--dev-file", str(tmp_path / "squad.json"), "--max-seq-length", "128", "--doc-stride", "64")
    paragraph = squad["data"][1]["paragraphs"][0]
    question = paragraph["qas"][0]
    (tmp_path / "questions.jsonl").write_text(json.dumps({"id": question["id"], "question": question["question"],
                                                          "context": paragraph["context"]}) + "\n"
                                              + "Who won?\tThe Broncos won the game.\n")
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "questions.jsonl"),
                          "--device", "cpu"])
    assert code == 0, err
    first, second = records(out)
    assert first["id"] == question["id"] and first["answer"] and first["answer"] in paragraph["context"]
    assert second["answer"] in "The Broncos won the game." and 0 < second["probability"] <= 1
    assert "null_odds" not in first  # a SQuAD 1.1 model always answers

    choices = [{"context": f"Someone opens the door {i}.", "choices": ["walks in.", "eats the door.", "sings."],
                "label": i % 3} for i in range(12)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(c) + "\n" for c in choices))
    run = finetune(tiny_model_dir, tmp_path / "mc", "--task", "multiple-choice", "--train-file",
                   str(tmp_path / "mc.jsonl"), "--dev-file", str(tmp_path / "mc.jsonl"))
    (tmp_path / "new-mc.txt").write_text("She picks up the phone.\tand answers it.\tand eats it.\tand flies.\n"
                                         '{"startphrase": "He sits.", "ending0": "a", "ending1": "b", '
                                         '"ending2": "c", "ending3": "d"}\n')
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "new-mc.txt"), "--device", "cpu"])
    assert code == 1 and "4 choices, but the first example has 3" in err
    (tmp_path / "new-mc.txt").write_text("She picks up the phone.\tand answers it.\tand eats it.\tand flies.\n")
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "new-mc.txt"), "--device", "cpu"])
    assert code == 0, err
    (record,) = records(out)
    assert record["choice"] == ["and answers it.", "and eats it.", "and flies."][record["prediction"]]
    assert len(record["probabilities"]) == 3

    seg = data / "semeval2014_absa" / "seg" / "Restaurants_Train.xml.seg"
    head_lines(seg, tmp_path / "absa" / "train.xml.seg", 60)
    run = finetune(tiny_model_dir, tmp_path / "atsc", "--task", "atsc", "--train-file",
                   str(tmp_path / "absa" / "train.xml.seg"), "--test-file", str(tmp_path / "absa" / "train.xml.seg"))
    (tmp_path / "aspects.txt").write_text("The fish was great but the service slow.\tservice\n")
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "aspects.txt"), "--device", "cpu"])
    assert code == 0, err
    (record,) = records(out)
    assert record["aspect"] == "service" and record["prediction"] in record["probabilities"]


def test_bad_input_and_output_are_refused(tiny_model_dir: Path, shared_dir: Path, tmp_path: Path,
                                          monkeypatch) -> None:
    glue = shared_dir / "data" / "glue"
    sst2 = tmp_path / "SST-2"
    head_lines(glue / "SST-2" / "train.tsv", sst2 / "train.tsv", 17)
    run = finetune(tiny_model_dir, tmp_path / "sst2", "--task", "sst2", "--data-dir", str(sst2))
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "missing.txt")])
    assert code == 1 and "--input" in err and "missing.txt: no such file" in err
    (tmp_path / "blank.txt").write_text("\n \n")
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "blank.txt")])
    assert code == 1 and "no non-blank lines" in err
    (tmp_path / "bad.txt").write_text('{"text": 3}\n')
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "bad.txt")])
    assert code == 1 and "bad.txt:1: 'text' must be non-empty text, got 3" in err
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "bad.txt"), "--output", "preds/"])
    assert code == 1 and "a JSON-lines file" in err
    code, _, err = cli(["predict", "--model", str(run)])
    assert code == 1 and "--output is required" in err
    # A large --input is read, predicted and written a block at a time; ids run on across blocks.
    sentences = [row.split("\t")[0] for row in (sst2 / "train.tsv").read_text().splitlines()[1:9]]
    (tmp_path / "eight.txt").write_text("\n".join(sentences[:4]) + "\n\n" + "\n".join(sentences[4:]) + "\n")
    code, whole, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "eight.txt"), "--device", "cpu"])
    assert code == 0, err
    monkeypatch.setattr("bertkit.commands.predict.INPUT_BLOCK_LINES", 3)
    code, blocked, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "eight.txt"), "--device", "cpu"])
    assert code == 0, err
    assert [r["id"] for r in records(blocked)] == [str(i) for i in range(8)]
    assert [r["prediction"] for r in records(blocked)] == [r["prediction"] for r in records(whole)]
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9 au lait\n")
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "latin1.txt"),
                        "--output", str(tmp_path / "never.jsonl"), "--device", "cpu"])
    assert code == 1 and "latin1.txt:2: not UTF-8" in err and not (tmp_path / "never.jsonl").exists()


def test_polyphone_reads_marked_sentences_and_answers_among_the_characters_readings(shared_dir: Path,
                                                                                   tiny_model_dir: Path,
                                                                                   tmp_path: Path, monkeypatch) -> None:
    g2pl = shared_dir / "data" / "polyphone" / "g2pL"
    data = tmp_path / "g2pl"
    for split, count in (("train", 200), ("dev", 40)):
        for suffix in ("sent", "lb"):
            head_lines(g2pl / f"{split}.{suffix}", data / f"{split}.{suffix}", count)
    run = finetune(tiny_model_dir, tmp_path / "poly", "--task", "polyphone", "--data-dir", str(data))
    (tmp_path / "marked.txt").write_text("她找了一块▁抹▁布。\n" + json.dumps({"id": "j", "text": "抹布", "position": 0},
                                                                      ensure_ascii=False) + "\n")
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "marked.txt"), "--device", "cpu"])
    assert code == 0, err
    first, second = records(out)
    assert (first["char"], first["position"], first["text"]) == ("抹", 5, "她找了一块抹布。") and second["id"] == "j"
    readings = {label for sentence, label in zip((data / "train.sent").read_text(encoding="utf-8").splitlines(),
                                                 (data / "train.lb").read_text(encoding="utf-8").splitlines())
                if "▁抹▁" in sentence}
    assert set(first["probabilities"]) == readings and first["prediction"] in readings
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-5
    code, out, err = cli(["predict", "--model", str(run), "--input", "-", "--device", "cpu"],
                         stdin="▁龘▁字\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert "never seen in training" in records(out)[0]["warning"]
    (tmp_path / "far.txt").write_text('{"text": "抹布", "position": 9}\n')
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "far.txt"), "--device", "cpu"])
    assert code == 1 and "far.txt:1: 'position' 9 is outside the text (0..1)" in err
    (tmp_path / "unmarked.txt").write_text("她找了一块抹布。\n")
    code, _, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "unmarked.txt"), "--device", "cpu"])
    assert code == 1 and "unmarked.txt:1: no marked character" in err


def test_python_predictor_gives_the_command_lines_records(shared_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    from bertkit import Predictor

    rte = tmp_path / "RTE"
    head_lines(shared_dir / "data" / "glue" / "RTE" / "train.tsv", rte / "train.tsv", 17)
    run = finetune(tiny_model_dir, tmp_path / "rte", "--task", "rte", "--data-dir", str(rte))
    inputs = [("A man plays a guitar.", "A man plays music."), {"id": "q", "text": "It rains.", "text_pair": "It is dry."}]
    (tmp_path / "in.txt").write_text("A man plays a guitar.\tA man plays music.\n"
                                     '{"id": "q", "text": "It rains.", "text_pair": "It is dry."}\n')
    code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "in.txt"), "--device", "cpu"])
    assert code == 0, err
    assert Predictor(run, device="cpu")(inputs) == records(out)


def test_serve_answers_predict_and_health_and_refuses_bad_requests(shared_dir: Path, tiny_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    import threading
    import urllib.error
    import urllib.request

    from bertkit.cli import build_parser
    from bertkit.commands.serve import make_server

    rte = tmp_path / "RTE"
    head_lines(shared_dir / "data" / "glue" / "RTE" / "train.tsv", rte / "train.tsv", 17)
    run = finetune(tiny_model_dir, tmp_path / "rte", "--task", "rte", "--data-dir", str(rte))
    argv = ["serve", "--model", str(run), "--device", "cpu", "--port", "0", "--max-batch", "2"]
    parser, _ = build_parser(argv)
    server = make_server(parser.parse_args(argv))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
            health = json.loads(response.read())
        assert health["task"] == "rte" and health["labels"] == ["entailment", "not_entailment"]
        inputs = [["A man plays a guitar.", "A man plays music."], {"id": "q", "text": "It rains.", "text_pair": "Dry."}]
        (tmp_path / "in.txt").write_text("A man plays a guitar.\tA man plays music.\n"
                                         '{"id": "q", "text": "It rains.", "text_pair": "Dry."}\n')
        code, out, err = cli(["predict", "--model", str(run), "--input", str(tmp_path / "in.txt"), "--device", "cpu"])
        assert code == 0, err
        status, body = post(json.dumps({"inputs": inputs}).encode())
        assert status == 200 and body["predictions"] == records(out)
        assert post(json.dumps({"inputs": ["one text only"]}).encode()) == (
            400, {"error": "input 0: task rte reads a pair of texts: give text<TAB>second text (or JSON with "
                           "\"text\" and \"text_pair\")"})
        assert post(b"{not json")[0] == 400 and post(b'{"inputs": []}')[0] == 400
        assert post(b'{"inputs": [null]}') == (400, {"error": "input 0: None; expected a string, a list of fields or "
                                                              "an object"})
        assert post(json.dumps({"inputs": inputs * 2}).encode()) == (400, {"error": "4 inputs; at most --max-batch 2 per request"})
        assert post(json.dumps({"inputs": inputs}).encode())[0] == 200  # still serving
    finally:
        server.shutdown()
        server.server_close()


def test_swag_raw_rows_are_read_as_in_training() -> None:
    """A SWAG run scored context = sent1, choice i = sent2 + ending i in training: new rows with SWAG's
    columns are built the same way; other lines as multiple-choice reads them."""
    from bertkit.tasks import TaskOptions, get_task_class

    swag = get_task_class("swag")(TaskOptions())
    row = {"sent1": "He opens the door.", "sent2": "He", "ending0": "walks in.", "ending1": "eats it.",
           "ending2": "sings.", "ending3": "flies away."}
    (example,) = swag.raw_examples([("x:1", json.dumps(row))], first_index=5)
    assert (example.guid, example.context) == ("5", "He opens the door.")
    assert example.choices == ["He walks in.", "He eats it.", "He sings.", "He flies away."]
    (plain,) = swag.raw_examples([("x:1", "A context.\tone\ttwo\tthree\tfour")])
    assert plain.choices == ["one", "two", "three", "four"]
    # Each line in its own form, in one block (a SWAG row used to make every other line fail).
    mixed = swag.raw_examples([("x:1", json.dumps({"context": "C.", "choices": list("abcd")})), ("x:2", json.dumps(row)),
                               ("x:3", "C.\ta\tb\tc\td")])
    assert [e.guid for e in mixed] == ["0", "1", "2"] and mixed[1].choices[0] == "He walks in."


def test_raw_inputs_take_the_field_names_of_the_tasks_own_data() -> None:
    from bertkit.tasks import TaskOptions, get_task_class

    mnli = get_task_class("mnli")(TaskOptions())
    (example,) = mnli.raw_examples([("x:1", json.dumps({"premise": "A man sings.", "hypothesis": "He is silent."}))])
    assert (example.text_a, example.text_b) == ("A man sings.", "He is silent.")
    qqp = get_task_class("qqp")(TaskOptions())
    (example,) = qqp.raw_examples([("x:1", json.dumps({"question1": "Why?", "question2": "How?"}))])
    assert (example.text_a, example.text_b) == ("Why?", "How?")
    custom = get_task_class("classification")(TaskOptions(extra={"text_column": "review"}))
    assert custom.raw_examples([("x:1", json.dumps({"review": "Great."}))])[0].text_a == "Great."
