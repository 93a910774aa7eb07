"""Hugging Face model folders: GPT and Llama against transformers' GPT2LMHeadModel / LlamaForCausalLM.

The fixtures (tests/fixtures/hf_models/, made offline by its make_fixtures.py) are tiny random models that
transformers wrote, with the float32 logits it computes on them; GPT-2's weights are float32, Llama's
bfloat16. Measured when written (transformers 5.24, torch 2.13 cpu): max |Δlogits| 4.8e-7 for GPT-2 and
1.1e-6 for Llama (float32, logits up to 2.4); minillm → transformers in float64: ~9e-16 for GPT-2, and
for Llama ~4e-7 with transformers as it is (its RoPE angles and RMSNorm work in float32 whatever the
model's dtype), ~2e-15 once those compute in float64 too. The first part needs neither torch nor
transformers (only the safetensors package, in the dev extra); the second (at the end) loads minillm's
files in them.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from optional import optional_import

from minillm import backend as B
from minillm.checkpoint import CheckpointError
from minillm.models import GPT, GPTConfig, Llama, LlamaConfig
from minillm.models.auto import load_causal_lm
from minillm.models.hf import (
    from_bf16_bits,
    read_config,
    read_safetensors,
    read_weights,
    write_config,
    write_safetensors,
)
from minillm.tokenizer import BPETokenizer, load_default_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "hf_models"
KINDS = {"gpt2": GPT, "llama": Llama}


def expected(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(input ids (B, T), transformers' float32 logits (B, T, V)) of fixture ``name``."""
    meta = json.loads((FIXTURES / name / "expected.json").read_text(encoding="utf-8"))
    return np.array(meta["input_ids"]), np.load(FIXTURES / name / meta["logits"])


def logits_of(model, ids) -> np.ndarray:
    return model(ids)[0].numpy()


def copy_fixture(name: str, to: Path) -> Path:
    shutil.copytree(FIXTURES / name, to)
    return to


def edit_config(folder: Path, **changes) -> Path:
    write_config(folder, {**read_config(folder), **changes})
    return folder


def state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype
                                          for k in sa)


def random_model(kind: str, tie: bool, dtype=np.float32):
    """A small random GPT or Llama (GQA), every weight perturbed off its init (unit norms, zero biases)."""
    if kind == "gpt2":
        model = GPT(GPTConfig(vocab_size=61, context_length=16, d_model=16, n_heads=2, n_layers=2,
                              tie_weights=tie))
    else:
        model = Llama(LlamaConfig(vocab_size=61, context_length=16, d_model=32, n_heads=4, n_kv_heads=2,
                                  n_layers=2, d_ff=40, rope_theta=500.0, rms_norm_eps=1e-5, tie_weights=tie))
    for p in model.parameters():
        p.data = (p.data + B.randn(*p.shape) * 0.1).astype(dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("name", KINDS)
def test_fixture_logits_match_transformers(name):
    model, tok = load_causal_lm(FIXTURES / name)
    assert type(model) is KINDS[name] and isinstance(tok, BPETokenizer) and tok.vocab_size == 800
    ids, ref = expected(name)
    out = logits_of(model, ids)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-5  # measured: 4.8e-7 (gpt2), 1.1e-6 (llama)


@pytest.mark.parametrize("name", KINDS)
def test_class_from_pretrained_is_what_load_causal_lm_gives(name):
    model = KINDS[name].from_pretrained(FIXTURES / name)
    assert not model.training  # eval mode, as transformers returns it
    assert state_equal(model, load_causal_lm(FIXTURES / name)[0])


def test_gpt2_fixture_maps_its_config_and_ties_its_head():
    model = GPT.from_pretrained(FIXTURES / "gpt2")
    c = model.config
    assert (c.vocab_size, c.context_length, c.d_model, c.n_heads, c.n_layers) == (800, 32, 16, 2, 2)
    assert c.d_ff == 64
    assert c.tie_weights and model.lm_head.weight is model.tok_emb.weight


def test_llama_fixture_maps_its_config():
    c = Llama.from_pretrained(FIXTURES / "llama").config
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.n_layers, c.d_ff) == (32, 4, 2, 2, 48)
    assert (c.rope_theta, c.rms_norm_eps, c.tie_weights, c.context_length) == (1000.0, 1e-5, False, 64)


@pytest.mark.parametrize("name", KINDS)
def test_float64_load(name):
    model = KINDS[name].from_pretrained(FIXTURES / name, dtype=np.float64)
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float64)}
    ids, ref = expected(name)
    out = logits_of(model, ids)
    assert out.dtype == np.float64 and np.abs(out - ref).max() <= 1e-5


def test_loading_leaves_minillm_rng_alone():
    state = B.get_rng_state()
    GPT.from_pretrained(FIXTURES / "gpt2")
    assert B.get_rng_state() == state


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", KINDS)
def test_fixture_round_trip_is_bit_exact_with_its_tokenizer(name, tmp_path):
    model, tok = load_causal_lm(FIXTURES / name)
    model.save_pretrained(tmp_path, tok)
    back, tok_back = load_causal_lm(tmp_path)
    assert state_equal(model, back) and tok_back == tok
    ids, _ = expected(name)
    assert np.array_equal(logits_of(model, ids), logits_of(back, ids))
    cfg = read_config(tmp_path)
    assert cfg["model_type"] == name and cfg["eos_token_id"] == tok.eos_id


def test_bf16_fixture_widens_exactly_and_writes_back_as_float32(tmp_path):
    """BF16 → float32 loses nothing: saved as float32, the tensors equal what transformers wrote."""
    Llama.from_pretrained(FIXTURES / "llama").save_pretrained(tmp_path, dtype="float32")
    ours, theirs = read_safetensors(tmp_path / "model.safetensors"), read_weights(FIXTURES / "llama")
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert read_config(tmp_path)["dtype"] == "float32"
    with pytest.raises(ValueError, match="dtype must be one of float64, float32, float16"):
        Llama.from_pretrained(FIXTURES / "llama").save_pretrained(tmp_path / "bf", dtype="bfloat16")
    assert not (tmp_path / "bf").exists()  # refused before anything is written


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_random_model_round_trip_is_bit_exact(kind, tie, dtype, tmp_path):
    model = random_model(kind, tie, dtype)
    model.save_pretrained(tmp_path)
    back = KINDS[kind].from_pretrained(tmp_path, dtype=dtype)
    assert state_equal(model, back) and back.config == model.config
    assert (back.lm_head.weight is back.tok_emb.weight) == tie
    names = read_safetensors(tmp_path / "model.safetensors")
    assert ("lm_head.weight" in names) == (not tie)  # a tied head is stored once, as transformers does


def test_sharded_checkpoint_loads_like_one_file(tmp_path):
    folder = copy_fixture("gpt2", tmp_path / "sharded")
    tensors = read_safetensors(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        write_safetensors(folder / file, {k: tensors[k] for k in keys})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert state_equal(GPT.from_pretrained(folder), GPT.from_pretrained(FIXTURES / "gpt2"))


def test_gpt2_names_without_prefix_and_with_mask_buffers_load(tmp_path):
    """OpenAI's original upload: no ``transformer.`` prefix, and causal-mask buffers in every layer."""
    folder = copy_fixture("gpt2", tmp_path / "old")
    tensors = read_safetensors(folder / "model.safetensors")
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), dtype=np.float32))
    write_safetensors(folder / "model.safetensors", tensors)
    assert state_equal(GPT.from_pretrained(folder), GPT.from_pretrained(FIXTURES / "gpt2"))


# ---------------------------------------------------------------------------------------------- safetensors
def test_writer_and_reader_agree_on_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"f64": rng.normal(size=(3, 4)), "f32": rng.normal(size=(5,)).astype(np.float32),
               "f16": rng.normal(size=(2, 3)).astype(np.float16), "i64": np.arange(-3, 3, dtype=np.int64),
               "i32": np.arange(6, dtype=np.int32).reshape(2, 3), "scalar": np.float32(2.5),
               "empty": np.zeros((0, 4), dtype=np.float32), "big_endian": np.arange(3, dtype=">f4")}
    write_safetensors(tmp_path / "a.safetensors", tensors)
    back = read_safetensors(tmp_path / "a.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype.newbyteorder("=") and back[k].shape == np.shape(v)
        assert np.array_equal(back[k], v)


def test_file_layout_is_the_reference_one(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {"b": np.ones(3, np.float32), "a": np.zeros(2, np.float64)})
    raw = (tmp_path / "a.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8:8 + n].rstrip(b" ").endswith(b"}")  # padded with spaces
    header = json.loads(raw[8:8 + n])
    assert list(header) == ["__metadata__", "a", "b"] and header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}
    assert header["b"] == {"dtype": "F32", "shape": [3], "data_offsets": [16, 28]}
    assert len(raw) == 8 + n + 28


@pytest.mark.parametrize("dtype, code", [("float16", "F16"), ("float64", "F64")])
def test_write_dtype_converts_floats_only(tmp_path, dtype, code):
    x = np.array([1.0, -2.5, 1e-3], dtype=np.float32)
    write_safetensors(tmp_path / "a.safetensors", {"x": x, "n": np.arange(3)}, dtype=dtype)
    raw = (tmp_path / "a.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["x"]["dtype"] == code and header["n"]["dtype"] == "I64"
    back = read_safetensors(tmp_path / "a.safetensors")
    assert np.allclose(back["x"], x, rtol=4e-3) and np.array_equal(back["n"], np.arange(3))


def test_bf16_bits_widen_to_the_float32_with_those_upper_bits():
    bits = np.arange(2**16, dtype=np.uint16)  # every bfloat16
    wide = from_bf16_bits(bits)
    assert wide.dtype == np.float32 and np.array_equal(wide.view(np.uint32) >> 16, bits)
    assert from_bf16_bits(np.array([0x3F80, 0xC000, 0x7F80], dtype=np.uint16)).tolist() == [1.0, -2.0, np.inf]


# ---------------------------------------------------------------------------------------------- errors
def write_raw(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize("header, data, words", [
    (b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}', b"\0" * 8, "not a valid safetensors"),
    (b'[1, 2]', b"", "not a valid safetensors file"),
    (b'{"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', b"\0" * 8, "not a valid safetensors"),
    (b'{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8, "not a valid safetensors"),
    (b'{"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"\0", "has dtype 'U8'"),
    (b'{"x": {"dtype": "F32"}}', b"", "not a valid safetensors file"),
])
def test_malformed_safetensors_names_the_file(tmp_path, header, data, words):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=words) as e:
        read_safetensors(path)
    assert str(path) in str(e.value)


def test_truncated_safetensors_names_the_file(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x10\0\0")
    with pytest.raises(CheckpointError, match="short.safetensors is not a valid safetensors file"):
        read_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "long.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match="long.safetensors is not a valid safetensors file"):
        read_safetensors(tmp_path / "long.safetensors")


def test_malformed_model_folder_names_the_file(tmp_path):
    folder = copy_fixture("gpt2", tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"garbage!" * 4)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_causal_lm(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not a valid Hugging Face config.json"):
        load_causal_lm(folder)


def test_missing_files_raise_file_not_found_naming_them(tmp_path):
    folder = copy_fixture("llama", tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"m/model.safetensors does not exist"):
        Llama.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"m/config.json does not exist"):
        load_causal_lm(folder)


def test_unsupported_model_type_names_the_folder_and_the_supported_ones(tmp_path):
    folder = edit_config(copy_fixture("gpt2", tmp_path / "m"), model_type="mistral")
    with pytest.raises(ValueError, match=r"m: config.json has model_type 'mistral'; minillm loads 'gpt2', "
                                         r"'llama'"):
        load_causal_lm(folder)
    with pytest.raises(ValueError, match="model_type='llama' is not supported"):
        GPT.from_pretrained(FIXTURES / "llama")


@pytest.mark.parametrize("name, changes, words", [
    ("gpt2", {"activation_function": "gelu"}, "activation_function='gelu' is not supported by minillm "
                                              "(supported: 'gelu_new', 'gelu_pytorch_tanh')"),
    ("gpt2", {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06 is not supported"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ("gpt2", {"n_head": 3}, "d_model 16 is not divisible by n_heads 3"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ("llama", {"attention_bias": True}, "attention_bias=True is not supported"),
    ("llama", {"mlp_bias": True}, "mlp_bias=True is not supported"),
    ("llama", {"head_dim": 16}, "head_dim=16 is not supported"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
     "rope_type='llama3' is not supported"),
    ("llama", {"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}},
     "rope_type='linear' is not supported"),
])
def test_configs_minillm_cannot_represent_are_refused_in_one_line(tmp_path, name, changes, words):
    folder = edit_config(copy_fixture(name, tmp_path / "m"), **changes)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        KINDS[name].from_pretrained(folder)
    assert len(str(e.value).splitlines()) == 1 and str(folder) in str(e.value)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    folder = edit_config(copy_fixture("gpt2", tmp_path / "m"), n_layer=3)
    with pytest.raises(CheckpointError, match=r"missing \['transformer.h.2."):
        GPT.from_pretrained(folder)


def test_save_pretrained_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="more than the model's vocab_size 61"):
        random_model("gpt2", True).save_pretrained(tmp_path, load_default_tokenizer())


def test_legacy_rope_theta_is_read():
    """transformers 4.x writes ``rope_theta`` at the top level, and no ``rope_parameters``."""
    from minillm.models.llama import config_from_hf

    base = {k: v for k, v in read_config(FIXTURES / "llama").items() if k != "rope_parameters"}
    assert config_from_hf({**base, "rope_theta": 250.0, "rope_scaling": None}, "x").rope_theta == 250.0


# ---------------------------------------------------------------------------------------------- interop
def torch_and_transformers():
    return (optional_import("torch", "torch runs transformers, the reference"),
            optional_import("transformers", "transformers is the reference for model folders"))


def float64_rope(theta: float, head_dim: int, torch):
    """transformers' rotary embedding's forward with the angles in float64 (its own uses float32)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hs/2,)

    def forward(x, position_ids):
        freqs = position_ids[..., None].double() * inv_freq  # (B, T, hs/2)
        emb = torch.cat([freqs, freqs], dim=-1)              # (B, T, hs), rotate_half's layout
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return forward


def in_float64(hf, theta: float, head_dim: int, torch) -> None:
    """Make transformers' Llama compute in float64 throughout: its RoPE angles and RMSNorms work in float32
    whatever the model's dtype (a ~1e-7 difference at float64)."""
    hf.model.rotary_emb.forward = float64_rope(theta, head_dim, torch)
    for m in hf.modules():
        if type(m).__name__ == "LlamaRMSNorm":
            m.forward = lambda h, m=m: m.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True)
                                                                   + m.variance_epsilon))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_transformers_loads_save_pretrained_with_the_same_float64_logits(kind, tie, tmp_path):
    torch, transformers = torch_and_transformers()
    model = random_model(kind, tie, np.float64)
    model.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert type(hf).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[kind]
    ids = np.array([[3, 14, 15, 9, 26, 5, 35, 60], [1, 0, 2, 7, 18, 28, 18, 28]])
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = logits_of(model, ids)
    if kind == "llama":  # transformers' float32 RoPE and RMSNorm cost ~4e-7; in float64 it agrees to ~1e-15
        print(f"max |Δlogits| llama tie={tie}, transformers as it is: {np.abs(ours - ref).max():.2g}")
        assert np.abs(ours - ref).max() <= 1e-5
        in_float64(hf, model.config.rope_theta, model.config.d_model // model.config.n_heads, torch)
        with torch.no_grad():
            ref = hf(torch.tensor(ids)).logits.numpy()
    print(f"max |Δlogits| {kind} tie={tie}: {np.abs(ours - ref).max():.2g}")
    assert np.abs(ours - ref).max() <= 1e-12  # measured ~3e-16 (gpt2), ~1e-15 (llama)


def test_safetensors_package_reads_ours_and_we_read_its(tmp_path):
    st = optional_import("safetensors.numpy", "the safetensors package is the reference format")
    rng = np.random.default_rng(0)
    tensors = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)),
               "h": rng.normal(size=(2, 2)).astype(np.float16), "i": np.arange(5, dtype=np.int64),
               "j": np.arange(4, dtype=np.int32)}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    st.save_file(tensors, theirs, metadata={"format": "pt"})
    write_safetensors(ours, tensors)
    for read in (read_safetensors(theirs), st.load_file(ours)):
        assert read.keys() == tensors.keys()
        assert all(np.array_equal(read[k], v) and read[k].dtype == v.dtype for k, v in tensors.items())
    one_dtype = {k: v for k, v in tensors.items() if v.dtype == np.float32} | {"x": np.ones(7, np.float32)}
    write_safetensors(tmp_path / "ours1.safetensors", one_dtype)
    assert (tmp_path / "ours1.safetensors").read_bytes() == st.save(one_dtype, metadata={"format": "pt"})


def test_bf16_written_by_torch_reads_as_torchs_values(tmp_path):
    torch = optional_import("torch", "torch's bfloat16 is the reference")
    st = optional_import("safetensors.torch", "the safetensors package is the reference format")
    x = np.concatenate([np.random.default_rng(0).normal(size=4096) * 10.0 ** np.arange(-4, 4).repeat(512),
                        [1 + 2**-8, 1 + 3 * 2**-8, 3.0e38, np.inf, -0.0]]).astype(np.float32)
    theirs = torch.from_numpy(x).to(torch.bfloat16)
    st.save_file({"x": theirs}, tmp_path / "theirs.safetensors")
    assert np.array_equal(read_safetensors(tmp_path / "theirs.safetensors")["x"], theirs.float().numpy())


def test_tokenizer_files_written_with_the_model_load_in_transformers(tmp_path):
    _, transformers = torch_and_transformers()
    model, tok = load_causal_lm(FIXTURES / "gpt2")
    model.save_pretrained(tmp_path, tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Mia went to the market."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
