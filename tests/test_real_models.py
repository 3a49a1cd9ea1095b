"""Real models from local files (torchvision:, hf:), their LoRA targets, the hf source's
tokenised text, image augmentation and the imagefolder source — offline, tiny models
written to a temporary folder."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedweave
from fedweave.core.augment import crop_flip
from fedweave.errors import ConfigError, DataError, ModelError
from fedweave.models.hub import load_state_dict_checked
from helpers_runs import assert_run_refused

transformers = pytest.importorskip("transformers")


def _torchvision_models():
    try:
        import torchvision.models as tvm
    except Exception as exc:  # not installed, or a build that does not match torch
        pytest.skip(f"torchvision is not importable here ({type(exc).__name__})")
    return tvm


# -- tiny models written with save_pretrained ------------------------------------------------


def _gpt2(folder, vocab=128):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return _gpt2(tmp_path_factory.mktemp("gpt2") / "model")


LM = {
    "data": {"dataset": "pydocs:16", "partition": {"kind": "natural"}},
    "task": {"kind": "language_model"},
    "client": {"local_steps": 2, "batch_size": 8, "lr": 0.05},
    "schedule": {"rounds": 1, "clients_per_round": 2},
}


def _lm_config(folder, **method):
    cfg = copy.deepcopy(LM)
    cfg["model"] = {"name": f"hf:{folder}"}
    if method:
        cfg["method"] = method
    return fedweave.load_config(cfg)


def test_hf_causal_lm_gives_the_models_own_logits_and_runs_on_pydocs(gpt2_folder, tmp_path):
    exp = fedweave.build_experiment(_lm_config(gpt2_folder))
    reference = transformers.GPT2LMHeadModel.from_pretrained(str(gpt2_folder), local_files_only=True).eval()
    x = exp.data.x[:3]
    model = exp.model_factory().eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(input_ids=x).logits)
    # tied embeddings are one parameter: the flat vector holds each tensor once
    assert exp.spec.num_params == sum(p.numel() for p in reference.parameters())
    result = fedweave.run(_lm_config(gpt2_folder), out=tmp_path / "lm")
    assert result.status == "completed"
    record = json.loads((tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()[-1])
    # perplexity is exp of the token loss
    assert record["perplexity"] == pytest.approx(np.exp(record["loss"]), rel=1e-9)


def test_reading_an_hf_folder_prints_nothing_of_transformers(tmp_path, capfd, caplog):
    """A config whose bos/eos ids lie beyond its vocabulary (GPT-2's 50256 in a tiny model)
    makes transformers warn whenever it is read: the CLI's output stays fedweave's."""
    from fedweave.models import build_model

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    # edited as text: a message transformers has not printed yet in this process (it warns once)
    saved.update(bos_token_id=50256, eos_token_id=50256)
    (tmp_path / "m" / "config.json").write_text(json.dumps(saved))
    capfd.readouterr()
    build_model(f"hf:{tmp_path / 'm'}", (16,), 97, task="language_model")
    out, err = capfd.readouterr()
    assert "bos_token_id" not in out + err and "[transformers]" not in out + err, out + err
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("transformers")]


def test_hf_causal_lm_refuses_a_vocabulary_smaller_than_the_data(tmp_path):
    folder = _gpt2(tmp_path / "small", vocab=50)
    with pytest.raises(ConfigError, match="vocabulary has 50 tokens.*at least 97"):
        fedweave.build_experiment(_lm_config(folder))


def test_plora_on_gpt2_adapts_c_attn_by_default(gpt2_folder):
    exp = fedweave.build_experiment(_lm_config(gpt2_folder, name="plora", rank=2))
    trainable = [s for s in exp.spec.segments if s.role == "trainable"]
    assert {s.name.split(".lora_")[0] for s in trainable} == {f"model.transformer.h.{i}.attn.c_attn" for i in (0, 1)}
    # B of each c_attn: out (3 * n_embd) x rank
    assert exp.spec.num_params == 2 * (3 * 16) * 2


def test_ferret_on_gpt2_uploads_block_coefficients(gpt2_folder, tmp_path):
    from fedweave.messages import SCALAR_BYTES

    reference = transformers.GPT2LMHeadModel.from_pretrained(str(gpt2_folder), local_files_only=True)
    size = sum(p.numel() for p in reference.parameters())
    block, n = 2048, 32
    # a block of d entries sends n coefficients, or its d entries when d <= n
    coefficients = sum(min(n, min(block, size - start)) for start in range(0, size, block))
    result = fedweave.run(_lm_config(gpt2_folder, name="ferret", block_size=block, num_vectors=n), out=tmp_path / "f")
    assert result.status == "completed"
    assert result.summary["bytes_up"] == result.summary["client_updates"] * (4 * coefficients + 5 * SCALAR_BYTES)


# -- sequence classification with a tokenizer from the same folder --------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "movie", "film", "very"]


@pytest.fixture(scope="module")
def bert_and_text(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = tmp_path_factory.mktemp("bert")
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2, pad_token_id=0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(base / "model")
    fast.save_pretrained(base / "model")
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(40):
        label = i % 2
        words = ["good" if label else "bad", str(rng.choice(["movie", "film"]))] + ["very"] * int(rng.integers(0, 3))
        texts.append(" ".join(words))
        labels.append(label)
    datasets.Dataset.from_dict({"text": texts, "label": labels}).save_to_disk(str(base / "data"))
    return base / "model", base / "data", texts


def test_hf_text_is_tokenised_by_the_models_tokenizer_and_classified(bert_and_text, tmp_path):
    model_dir, data_dir, texts = bert_and_text
    cfg = fedweave.load_config({
        "data": {"dataset": "hf", "root": str(data_dir), "max_length": 6, "test_fraction": 0.25,
                 "partition": {"kind": "iid", "num_clients": 3}, "client_val_fraction": 0.0},
        "model": {"name": f"hf:{model_dir}"},
        "client": {"local_steps": 2, "batch_size": 4},
        "schedule": {"rounds": 1, "clients_per_round": 2},
    })
    assert cfg.data.tokenizer == str(model_dir)  # the model's own folder by default
    exp = fedweave.build_experiment(cfg)
    ids = {w: i for i, w in enumerate(WORDS)}
    by_hand = torch.tensor([([ids[w] for w in t.split()] + [0] * 6)[:6] for t in texts])
    # every example, in order, tokenised word by word, truncated and padded with [PAD] = 0
    assert exp.data.input_shape == (6,) and exp.data.x.dtype == torch.int64
    assert torch.equal(exp.data.x, by_hand)
    # the wrapper's logits are BERT's with the attention mask of the non-pad tokens
    reference = transformers.BertForSequenceClassification.from_pretrained(str(model_dir), local_files_only=True).eval()
    model = exp.model_factory().eval()
    x = exp.data.x[:4]
    with torch.no_grad():
        assert torch.equal(model(x), reference(input_ids=x, attention_mask=(x != 0).long()).logits)
    assert fedweave.run(cfg, out=tmp_path / "text").status == "completed"


def test_hf_text_without_a_tokenizer_is_refused(bert_and_text):
    _, data_dir, _ = bert_and_text
    cfg = fedweave.load_config({"data": {"dataset": "hf", "root": str(data_dir)}, "model": {"name": "mlp"}})
    with pytest.raises(DataError, match="holds text.*data.tokenizer"):
        fedweave.build_experiment(cfg)


# -- torchvision and state_dict files ----------------------------------------------------------------


def test_weights_file_with_other_shapes_names_them(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match=r"1.weight: file \(5, 3\), model \(2, 3\).*1.bias: file \(5,\), model \(2,\)"):
        load_state_dict_checked(model, tmp_path / "w.pt")
    partial = {k: v for k, v in nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict().items() if k.startswith("0.")}
    torch.save(partial, tmp_path / "p.pt")
    with pytest.raises(ModelError, match="lacks 1.weight, 1.bias"):
        load_state_dict_checked(model, tmp_path / "p.pt")
    load_state_dict_checked(model, tmp_path / "p.pt", strict=False)  # a fresh head
    assert torch.equal(model[0].weight, partial["0.weight"])


def test_torchvision_resnet18_loads_a_local_state_dict(tmp_path):
    tvm = _torchvision_models()
    torch.manual_seed(1)
    saved = tvm.resnet18(num_classes=10).state_dict()
    torch.save(saved, tmp_path / "r18.pt")
    from fedweave.models import build_model

    model = build_model("torchvision:resnet18", (3, 32, 32), 10, weights_path=str(tmp_path / "r18.pt"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ModelError, match=r"fc.weight: file \(10, 512\), model \(5, 512\)"):
        build_model("torchvision:resnet18", (3, 32, 32), 5, weights_path=str(tmp_path / "r18.pt"))
    with pytest.raises(ConfigError, match="no classification model 'resnet19'.*resnet18"):
        build_model("torchvision:resnet19", (3, 32, 32), 10)


# -- bad input on the command line: exit 2, one paragraph, no run directory --------------------------


def test_bad_real_models_exit_2_without_a_run_directory(tmp_path, gpt2_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    cases = [
        (["--set", f"model.name=hf:{tmp_path / 'nowhere'}"], ["does not exist", "save_pretrained"]),
        (["--set", f"model.name=hf:{empty}"], ["holds no model", "config.json"]),
        (["--set", "model.name=torchvision:resnet19"], ["torchvision"]),
        (["--set", f"model.name=hf:{gpt2_folder}", "--set", "task.kind=language_model", "--set", "data.dataset=pydocs:40"],
         ["at most 32 tokens", "pydocs:<L>"]),
    ]
    for args, needles in cases:
        assert_run_refused(tmp_path / "run", args, needles)


def _swap_weights(folder, config_from, weights_from):
    """A folder whose config.json comes from one save_pretrained and model.safetensors from another."""
    import shutil

    folder.mkdir()
    shutil.copy(config_from / "config.json", folder / "config.json")
    shutil.copy(weights_from / "model.safetensors", folder / "model.safetensors")
    return folder


def test_hf_weights_of_other_shapes_or_another_model_are_refused_naming_them(tmp_path):
    """transformers raises a bare RuntimeError for a causal LM whose weights do not fit its
    config.json and silently re-initialises the mismatched body of a classifier: both are a
    ConfigError naming the tensors; only a classifier head may differ."""
    from fedweave.models import build_model

    torch.manual_seed(0)
    for name, width in (("wide", 32), ("narrow", 16)):
        cfg = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=width, n_layer=2, n_head=2)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / name)
    mixed = _swap_weights(tmp_path / "mixed", tmp_path / "wide", tmp_path / "narrow")
    with pytest.raises(ConfigError, match=r"do not fit its config.json: shapes differ.*"
                                          r"transformer.h.0.attn.c_attn.weight: file \(16, 48\), config \(32, 96\)"):
        build_model(f"hf:{mixed}", (16,), 97, task="language_model")
    for name, inner in (("bert32", 32), ("bert48", 48)):
        cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=inner, max_position_embeddings=16, num_labels=2)
        transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / name)
    body = _swap_weights(tmp_path / "body", tmp_path / "bert48", tmp_path / "bert32")
    with pytest.raises(ConfigError, match=r"bert.encoder.layer.0.intermediate.dense.weight: file \(32, 16\), config \(48, 16\)"):
        build_model(f"hf:{body}", (8,), 5, task="classification")
    # the whole body of another architecture: every tensor missing, not a silently random model
    other = _swap_weights(tmp_path / "other", tmp_path / "wide", tmp_path / "bert32")
    with pytest.raises(ConfigError, match=r"the weights lack .*transformer.h.0"):
        build_model(f"hf:{other}", (16,), 97, task="language_model")
    # a head for another number of classes is no problem: it starts afresh, the body is the saved one
    model = build_model(f"hf:{tmp_path / 'bert32'}", (8,), 5, task="classification")
    saved = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "bert32"), local_files_only=True)
    assert model.model.classifier.out_features == 5
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.model.state_dict().items()
               if k.startswith("bert."))


def test_hf_weights_that_do_not_fit_exit_2_without_a_run_directory(tmp_path):
    torch.manual_seed(0)
    for name, width in (("wide", 32), ("narrow", 16)):
        cfg = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=width, n_layer=2, n_head=2)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / name)
    mixed = _swap_weights(tmp_path / "mixed", tmp_path / "wide", tmp_path / "narrow")
    assert_run_refused(tmp_path / "run", ["--set", f"model.name=hf:{mixed}", "--set", "task.kind=language_model",
                                          "--set", "data.dataset=pydocs:16", "--set", "data.partition.kind=natural"],
                       ["do not fit its config.json", "shapes differ", "one save_pretrained"])


# -- augmentation ----------------------------------------------------------------------------------


def _crop_flip_by_hand(x, dy, dx, flip):
    out = []
    for b in range(len(x)):
        padded = F.pad(x[b], (4, 4, 4, 4))
        img = padded[:, dy[b] : dy[b] + x.shape[2], dx[b] : dx[b] + x.shape[3]]
        out.append(torch.flip(img, dims=[2]) if flip[b] else img)
    return torch.stack(out)


def test_crop_flip_matches_a_per_image_crop_and_flip():
    x = torch.arange(6 * 2 * 5 * 7, dtype=torch.float32).view(6, 2, 5, 7) + 1  # no zeros: padding shows
    out = crop_flip(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    assert out.shape == x.shape
    assert torch.equal(out, _crop_flip_by_hand(x, dy.tolist(), dx.tolist(), flip.tolist()))
    # centred and unflipped is the identity; a flip of it mirrors the columns
    assert torch.equal(_crop_flip_by_hand(x, [4] * 6, [4] * 6, [False] * 6), x)
    assert torch.equal(_crop_flip_by_hand(x, [4] * 6, [4] * 6, [True] * 6)[:, :, :, 0], x[:, :, :, -1])
    assert torch.equal(out, crop_flip(x, torch.Generator().manual_seed(3)))  # seeded: the same again
    assert not torch.equal(out, crop_flip(x, torch.Generator().manual_seed(4)))


IMAGES = {
    "data": {"dataset": "synthetic", "partition": {"num_clients": 4}},
    "schedule": {"rounds": 2, "clients_per_round": 2},
    "client": {"epochs": 1, "batch_size": 16},
}


def _image_source(name, options):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 3, 8, 8, generator=g)
    y = torch.arange(120) % 3
    return fedweave.data.DataSource("tiny-images", x, y, None, None, 3, (3, 8, 8))


@pytest.fixture
def tiny_images():
    """A registered source of 120 random 3x8x8 images, unregistered afterwards."""
    from fedweave.data import DATASETS, register_source, sources

    saved = dict(sources._SOURCES), dict(DATASETS)
    register_source("tiny-images-test", _image_source, description="test images")
    yield
    sources._SOURCES.clear()
    sources._SOURCES.update(saved[0])
    DATASETS.clear()
    DATASETS.update(saved[1])


def test_augmentation_is_seeded_per_job_and_changes_training(tmp_path, tiny_images):
    base = copy.deepcopy(IMAGES)
    base["data"]["dataset"] = "tiny-images-test"
    base["model"] = {"name": "cnn"}
    aug = copy.deepcopy(base)
    aug["data"]["augment"] = "crop_flip"
    first = fedweave.run(fedweave.load_config(aug), out=tmp_path / "a")
    again = fedweave.run(fedweave.load_config(aug), out=tmp_path / "b")
    plain = fedweave.run(fedweave.load_config(base), out=tmp_path / "c")
    assert torch.equal(first.params, again.params)
    assert not torch.equal(first.params, plain.params)
    vec = copy.deepcopy(aug)
    vec["executor"] = {"kind": "vectorized"}
    with pytest.raises(ConfigError, match="data.augment=crop_flip"):
        fedweave.build_experiment(fedweave.load_config(vec))
    flat = copy.deepcopy(IMAGES)
    flat["data"]["augment"] = "crop_flip"
    with pytest.raises(ConfigError, match="needs float images"):
        fedweave.build_experiment(fedweave.load_config(flat))


# -- imagefolder ------------------------------------------------------------------------------------


def test_imagefolder_reads_pngs_once_and_caches_outside_the_data(tmp_path):
    from PIL import Image

    from fedweave.data import load_source

    root = tmp_path / "images"
    colours = {("train", "cat"): [(255, 0, 0), (0, 255, 0)], ("train", "dog"): [(0, 0, 255)],
               ("test", "dog"): [(10, 20, 30)]}
    for (part, cls), cs in colours.items():
        (root / part / cls).mkdir(parents=True)
        for i, c in enumerate(cs):
            Image.new("RGB", (3, 2), c).save(root / part / cls / f"{i}.png")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cache = tmp_path / "cache"
    src = load_source("imagefolder", root=str(root), cache=str(cache))
    assert src.num_classes == 2 and src.input_shape == (3, 2, 3)
    assert src.y_train.tolist() == [0, 0, 1] and src.y_test.tolist() == [1]
    expected = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.float32) / 255
    assert torch.equal(src.x_train, expected[:, :, None, None].expand(3, 3, 2, 3))
    assert torch.equal(src.x_test[0, :, 1, 2], torch.tensor([10, 20, 30], dtype=torch.float32) / 255)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written into the data
    files = list(cache.glob("imagefolder-*.npz"))
    assert len(files) == 1
    again = load_source("imagefolder", root=str(root), cache=str(cache))  # from the cache
    assert torch.equal(again.x_train, src.x_train) and len(list(cache.glob("*.npz"))) == 1
    Image.new("RGB", (3, 2), (1, 2, 3)).save(root / "train" / "dog" / "1.png")  # a new image: a new cache file
    grown = load_source("imagefolder", root=str(root), cache=str(cache))
    assert grown.y_train.tolist() == [0, 0, 1, 1] and len(list(cache.glob("*.npz"))) == 2
    Image.new("RGB", (4, 4)).save(root / "train" / "dog" / "2.png")
    with pytest.raises(DataError, match="resize the images to one size"):
        load_source("imagefolder", root=str(root), cache=str(cache))


def test_hf_image_classifier_gets_the_datas_classes_and_pixel_values(tmp_path):
    from fedweave.models import build_model

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=2)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    model = build_model(f"hf:{tmp_path / 'vit'}", (3, 8, 8), 5, task="classification").eval()
    # the saved 2-class head is replaced by one for the data's 5 classes; the body is the saved one
    reference = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / "vit"), local_files_only=True)
    assert model.model.classifier.out_features == 5
    saved = reference.state_dict()
    body = {k: v for k, v in model.model.state_dict().items() if not k.startswith("classifier")}
    assert body and all(torch.equal(v, saved[k]) for k, v in body.items())
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model.model(pixel_values=x).logits) and model(x).shape == (2, 5)
    # plora's default: the attention's query and value projections, whatever transformers calls them
    from fedweave.methods.plora import select_targets

    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    qv = [n for n in linear if n.rsplit(".", 1)[-1] in ("query", "value", "q_proj", "v_proj")]
    assert len(qv) == 2 and select_targets(model, None) == qv


def test_hf_sequence_model_refuses_features_that_are_not_token_ids(bert_and_text, tmp_path):
    """A sequence classifier casts its inputs to token ids: real-valued features (word
    counts scaled, embeddings) would be truncated without a word, ids beyond the
    vocabulary would fail deep inside the embedding. Both are refused up front."""
    model_dir = bert_and_text[0]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    real = tmp_path / "real.npz"
    np.savez(real, x=rng.random((40, 8)).astype(np.float32), y=y)
    beyond = tmp_path / "beyond.npz"
    ids = rng.integers(0, len(WORDS), (40, 8))
    ids[3, 2] = len(WORDS) + 5
    np.savez(beyond, x=ids, y=y)
    common = ["--set", f"model.name=hf:{model_dir}", "--set", "data.dataset=npz", "--set", "data.partition.num_clients=2",
              "--set", "data.partition.min_size=5", "--set", "schedule.clients_per_round=2"]
    assert_run_refused(tmp_path / "run", common + ["--set", f"data.root={real}"], ["reads token ids", "real-valued"])
    assert_run_refused(tmp_path / "run", common + ["--set", f"data.root={beyond}"],
                       [f"from 0 to {len(WORDS) - 1}", f"run from 0 to {len(WORDS) + 5}"])
    whole = tmp_path / "whole.npz"  # whole numbers stored as floats are token ids all the same
    np.savez(whole, x=rng.integers(0, len(WORDS), (40, 8)).astype(np.float32), y=y)
    exp = fedweave.build_experiment(fedweave.load_config(None, [a for a in common if a != "--set"] + [f"data.root={whole}"]))
    assert exp.data.num_classes == 2
