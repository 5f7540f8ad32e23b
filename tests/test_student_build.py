"""build_student: which modules get LoRA adapters."""
import pytest
import torch

from qr_ds.tiny import build_tiny_student
from qr_ds.train.config import LORA_TARGETS, LoraSettings, StudentConfig
from qr_ds.train.student import build_student


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_student("llama-bpe", tmp_path_factory.mktemp("s") / "llama", ["Ava has 3 apples."],
                              vocab_size=300, hidden=64)


def adapted(student) -> set[str]:
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in student.lm.named_parameters() if ".lora_A" in n}


def test_a_target_module_the_model_lacks_is_named_not_dropped(llama):
    """A typo once left v_proj without adapters, silently: the run trained fewer weights than asked."""
    cfg = StudentConfig(name="a", model=str(llama), lora=LoraSettings(target_modules=["q_proj", "v_porj"]))
    with pytest.raises(ValueError, match=r"\['v_porj'\] name no module of .*'v_proj'"):
        build_student(cfg, None, torch.device("cpu"))
    cfg = StudentConfig(name="a", model=str(llama), lora=LoraSettings(target_modules=["q_proj", "v_proj"]))
    assert adapted(build_student(cfg, None, torch.device("cpu"))) == {"q_proj", "v_proj"}
    assert adapted(build_student(StudentConfig(name="a", model=str(llama)), None, torch.device("cpu"))) == set(LORA_TARGETS)
