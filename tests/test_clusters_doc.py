"""Every command docs/clusters.md prints, run as printed (through a shell, in the printed order) from a
folder laid out like a checkout. Only what this CPU machine cannot have is swapped, in the files the
commands read, never in the commands:
- the students: tiny ones in the configs' students[].model, and CPU training's settings beside them
  (backend gloo, float32, no nf4, which need a GPU);
- the data files, at the printed paths: exports read data/samples through --from-file, the pools are tiny
  embedded ones, data/gsm8k/train.jsonl holds three questions;
- the hosted teacher and judge: a real HTTP server on loopback that answers with the gold and VALID;
- the hosts and ports: the hostfile names localhost with 2 slots once the dry run has read the printed
  one, SLURM's nodes are two launchers on this machine with one GPU's worth of ranks each (a fake srun
  and scontrol, and an ssh that runs its command here), and launches get free ports since the suite runs launches side by side;
- the evaluation: the hf backend in float32 on three questions (vLLM in bfloat16 needs a GPU).
The SLURM script is also run with a node killed after the first checkpoint: the job requeues itself,
resumes (--resume auto) and finishes. SKIPPED names the commands not run and why."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qr_ds.tasks import get_task
from qr_ds.testing import builders as trainkit
from qr_ds.testing.stub_server import StubChatServer
from qr_ds.tiny import tokenizer_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "clusters.md"
PAPER = "configs/paper-mistral-gemma.yaml"
SKIPPED = {
    r"pip install -e '\.\[gpu\]'": "installs packages; tests/test_install.py installs the package",
    r"python launch/table1\.py --hostfile hostfile": "five trainings and evaluations: its per-task commands run "
                                                      "below, and tests/test_table1.py checks its merge",
}


def doc_commands() -> list[str]:
    """The lines of the doc's code blocks, continuations joined, comments dropped."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", DOC.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                lines.append(re.sub(r"\s+", " ", line))
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAKE_SRUN = '''import os, signal, subprocess, sys, time
flag, shell, dash_c, cmd = sys.argv[1:5]
assert (flag, shell, dash_c) == ("--kill-on-bad-exit=1", "bash", "-c"), sys.argv
procs = []
for node in range(int(os.environ["SLURM_NNODES"])):  # node 0 first: it hosts the rendezvous store
    procs.append(subprocess.Popen(["bash", "-c", cmd], env=dict(os.environ, SLURM_NODEID=str(node)),
                                  start_new_session=True))
    time.sleep(1)
kill_when, killed = os.environ.get("FAKE_KILL_NODE1_WHEN"), False
while any(p.poll() is None for p in procs):
    if kill_when and not killed and os.path.exists(kill_when):
        os.killpg(procs[1].pid, signal.SIGKILL)  # node 1 is gone: its launcher and ranks
        killed = True
    if any(p.poll() for p in procs):  # --kill-on-bad-exit=1
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
    time.sleep(0.2)
sys.exit(1 if any(p.returncode for p in procs) else 0)
'''
FAKE_SCONTROL = '''import os, sys
if sys.argv[1:3] == ["show", "hostnames"]:
    print("localhost\\nlocalhost")
elif sys.argv[1] == "requeue":
    open(os.environ["FAKE_REQUEUED"], "w").write(sys.argv[2])
'''
FAKE_SSH = '''import subprocess, sys
args = sys.argv[1:]
while args[0].startswith("-"):  # -o OPTION, -p PORT
    args = args[2:]
sys.exit(subprocess.call(args[1:]))  # this machine is every host
'''
FAKE_SBATCH = '''import os, subprocess, sys
restarts = 0
while True:  # SLURM reruns a requeued job's script with SLURM_RESTART_COUNT raised
    env = dict(os.environ, SLURM_RESTART_COUNT=str(restarts))
    if restarts:
        env.pop("FAKE_KILL_NODE1_WHEN", None)
    status = subprocess.call(["bash", *sys.argv[1:]], env=env)
    if not os.path.exists(os.environ["FAKE_REQUEUED"]):
        sys.exit(status)
    os.remove(os.environ["FAKE_REQUEUED"])
    restarts += 1
'''


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        for name in ("launch", "ds_configs"):
            (root / name).symlink_to(ROOT / name)
        (root / "configs").mkdir()
        bin_ = root / "bin"
        bin_.mkdir()
        for name, code in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH), ("ssh", FAKE_SSH)):
            (bin_ / name).write_text(f"#!{sys.executable}\n{code}")
            (bin_ / name).chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.env.update(PATH=f"{bin_}:{Path(sys.executable).parent}:{os.environ['PATH']}", DS_ACCELERATOR="cpu",
                        OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GEMINI_API_KEY="sk-stand-in",
                        FAKE_REQUEUED=str(root / "requeued"), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[1-2]",
                        SLURM_NNODES="2", SLURM_GPUS_ON_NODE="1")
        self.students = None

    def run(self, command: str, timeout: float = 1200, **env) -> subprocess.CompletedProcess:
        proc = subprocess.run(command, shell=True, cwd=self.root, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return proc

    def tiny_pool(self, path: str) -> None:
        """A tiny embedded pool at the printed path (its embeddings beside it, as `qr-ds embed` writes)."""
        pool = trainkit.make_pool(self.root / Path(path).parent, n_questions=2)
        self.students = self.students or trainkit.make_students(self.root / "students", pool)
        pool.rename(self.root / path)

    def paper_config(self, output_dir: str) -> None:
        """The shipped paper config with the tiny students and CPU's settings, writing to output_dir."""
        cfg = yaml.safe_load((ROOT / PAPER).read_text())
        for s, path in zip(cfg["students"], self.students):
            s.update(model=str(path), tokenizer=str(tokenizer_dir(path)), dtype="float32")
            s["lora"]["quantize"] = "none"
        cfg.update(backend="gloo", output_dir=output_dir)
        cfg["data"]["max_len"] = 1024  # the paper's 1536 is over the tiny students' 1024 positions
        (self.root / PAPER).write_text(yaml.safe_dump(cfg, sort_keys=False))

    def hostfile(self, text: str) -> None:
        (self.root / "hostfile").write_text(text)

    def metrics(self, run: str) -> list[int]:
        return [json.loads(line)["step"] for line in (self.root / run / "metrics.jsonl").read_text().splitlines()]


def gold_answering_server(questions: Path) -> StubChatServer:
    gold = {ex.question: ex.gold for ex in get_task("gsm8k").load(str(questions))}

    def reply(prompt: str, seed) -> str:
        if '"verdict"' in prompt:
            return '{"verdict": "VALID", "reason": "every step follows"}'
        return f"Adding the amounts step by step.\nThe answer is {next(a for q, a in gold.items() if q in prompt)}."

    return StubChatServer(reply=reply)


def test_every_command_of_the_doc_is_run_or_skipped_with_a_reason():
    handled = [pattern for pattern, _ in HANDLERS] + list(SKIPPED)
    unhandled = [c for c in doc_commands() if not any(re.fullmatch(p, c) for p in handled)]
    assert unhandled == [], "docs/clusters.md prints commands this test does not run"


# ---- one handler per printed command; each asserts what the doc says it does ----------------------

def export(ws: Workspace, cmd: str, task: str, part: str, out: str) -> None:
    proc = ws.run(f"{cmd} --from-file {ROOT / 'data/samples' / task}.jsonl")
    assert f"to {out}" in proc.stdout and (ws.root / out).is_file()


def plan(ws: Workspace, cmd: str) -> None:
    out = ws.run(cmd).stdout
    assert "teacher calls: 270 (openai, gemini-1.5-pro-001)" in out and "nothing was asked" in out  # 45 x 6
    assert not (ws.root / "runs/arc_challenge/pool.jsonl").exists()


def api_key(ws: Workspace, cmd: str) -> None:
    ws.env["OPENAI_API_KEY"] = "sk-stand-in"


def stage(ws: Workspace, cmd: str, name: str) -> None:
    ws.run(cmd)
    out = {"generate": "pool", "filter": "filtered", "embed": "embedded"}[name]
    rows = (ws.root / f"runs/gsm8k/{out}.jsonl").read_text().splitlines()
    assert len(rows) == 3 * 6  # three questions x six styles, every path kept


def dry_run(ws: Workspace, cmd: str) -> None:
    out = ws.run(cmd).stdout
    assert "world: 16 processes" in out and "student 'mistral'" in out and "ranks 8-15 on node" in out
    assert "= 64 paths an optimizer step" in out and "nothing was started" in out
    assert not (ws.root / "runs/arc_challenge/qr_distill").exists()


def hostfile_line(ws: Workspace, cmd: str) -> None:
    assert cmd in (ws.root / "hostfile").read_text()  # written from the doc before the dry run read it


def launch(ws: Workspace, cmd: str, output_dir: str, **env) -> subprocess.CompletedProcess:
    ws.paper_config(output_dir)
    ws.hostfile("localhost slots=2\n")
    proc = ws.run(cmd, **env)
    assert (ws.root / output_dir / "checkpoints/latest").is_file(), proc.stderr[-3000:]
    return proc


def deepspeed(ws: Workspace, cmd: str) -> None:
    launch(ws, cmd.replace("deepspeed --hostfile", f"deepspeed --master_port {free_port()} --hostfile"),
           "runs/arc_challenge/qr_distill")


def qr_ds_train(ws: Workspace, cmd: str) -> None:
    launch(ws, cmd, "runs/qr_ds_train/qr_distill")


def sbatch(ws: Workspace, cmd: str) -> None:
    launch(ws, cmd, "runs/sbatch/qr_distill", QR_DS_RDZV_PORT=str(free_port()))
    # A node dies after the first checkpoint: the job requeues itself, resumes and finishes.
    run = "runs/requeue/qr_distill"
    proc = launch(ws, f"{cmd} save_every=2", run, QR_DS_RDZV_PORT=str(free_port()),
                  FAKE_KILL_NODE1_WHEN=str(ws.root / run / "checkpoints/latest"))
    assert "[qr_ds] requeueing job 4242" in proc.stderr and "resumed from" in proc.stdout + proc.stderr
    steps = ws.metrics(run)
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > 2


def srun(ws: Workspace, cmd: str) -> None:
    launch(ws, cmd.replace(":29500", f":{free_port()}"), "runs/srun/qr_distill", head="localhost", per_node="1")


def evaluate(ws: Workspace, cmd: str) -> None:
    cfg = yaml.safe_load((ROOT / "configs/eval-paper.yaml").read_text())
    cfg.update(backend="hf", dtype="float32", limit=3, max_new_tokens=8)
    (ws.root / "configs/eval-paper.yaml").write_text(yaml.safe_dump(cfg))
    ws.run(cmd)
    out = re.search(r"--out (\S+)", cmd)
    summary = json.loads((ws.root / (out.group(1) if out else cfg["out"]) / "summary.json").read_text())
    task = re.search(r"--task (\w+)=", cmd)
    assert summary["tasks"] == [task.group(1) if task else "arc_challenge"]
    assert {r["method"].split(" @ ")[0] for r in summary["rows"]} >= {"mistral", "gemma"}


def table1_merge(ws: Workspace, cmd: str) -> None:
    out = ws.run(cmd).stdout
    assert "| mistral |" in out and "Not evaluated yet: strategyqa, anli, date_understanding (no Avg)" in out
    assert json.loads((ws.root / "runs/table1.json").read_text())["missing"] == ["strategyqa", "anli",
                                                                                 "date_understanding"]


def table1_train(ws: Workspace, cmd: str) -> None:
    ws.tiny_pool("runs/math/embedded.jsonl")
    launch(ws, cmd, "runs/arc_challenge/qr_distill")  # output_dir=runs/math/qr_distill overrides it
    assert (ws.root / "runs/math/qr_distill/checkpoints/latest").is_file()


HANDLERS = [
    (r"qr-ds data export (\w+) --part (\w+) --out (\S+)", export),
    (r"qr-ds generate configs/pipeline-gsm8k-openai\.yaml .* --plan", plan),
    (r"export OPENAI_API_KEY=\.\.\.", api_key),
    (r"qr-ds (generate|filter|embed) configs/pipeline-gsm8k-openai\.yaml", stage),
    (r"qr-ds train --dry-run --config configs/paper-mistral-gemma\.yaml .*", dry_run),
    (r"node-[ab] slots=8", hostfile_line),
    (r"deepspeed --hostfile hostfile launch/train\.py --config configs/paper-mistral-gemma\.yaml", deepspeed),
    (r"qr-ds train --config configs/paper-mistral-gemma\.yaml --hostfile hostfile", qr_ds_train),
    (r"sbatch launch/slurm_train\.sh configs/paper-mistral-gemma\.yaml", sbatch),
    (r'srun --kill-on-bad-exit=1 bash -c "exec python -m torch\.distributed\.run .*"', srun),
    (r"qr-ds eval --config configs/eval-paper\.yaml.*", evaluate),
    (r"qr-ds train --config configs/paper-mistral-gemma\.yaml --hostfile hostfile --resume auto .*", table1_train),
    (r"python launch/table1\.py --merge-only", table1_merge),
]


@pytest.mark.timeout(3600)  # seven trainings and two evaluations, each starting torch (and DeepSpeed)
def test_the_doc_runs_as_printed(tmp_path):
    ws = Workspace(tmp_path)
    commands = doc_commands()
    # Data the commands read at their printed paths; the hostfile as the doc prints it.
    (tmp_path / "data/gsm8k").mkdir(parents=True)
    questions = (ROOT / "data/gsm8k/train.jsonl").read_text().splitlines()[:3]
    (tmp_path / "data/gsm8k/train.jsonl").write_text("\n".join(questions) + "\n")
    ws.hostfile("".join(c + "\n" for c in commands if re.fullmatch(r"node-[ab] slots=8", c)))
    for task in ("math",):  # "the same three lines" for another task, which the Table 1 commands read
        for part in ("dev", "test"):
            ws.run(f"qr-ds data export {task} --part {part} --out data/{task}/{part}.jsonl "
                   f"--from-file {ROOT / 'data/samples' / task}.jsonl")
    ws.tiny_pool("runs/arc_challenge/embedded.jsonl")
    ws.paper_config("runs/arc_challenge/qr_distill")
    pipeline = yaml.safe_load((ROOT / "configs/pipeline-gsm8k-openai.yaml").read_text())
    with gold_answering_server(tmp_path / "data/gsm8k/train.jsonl") as server:
        pipeline["generate"]["teacher"]["base_url"] = pipeline["filter"]["judge"]["base_url"] = server.url
        (tmp_path / "configs/pipeline-gsm8k-openai.yaml").write_text(yaml.safe_dump(pipeline))
        # A command printed twice runs once, where it last appears (its inputs come first).
        last = {c: i for i, c in enumerate(commands)}
        for cmd in sorted(last, key=last.get):
            if any(re.fullmatch(p, cmd) for p in SKIPPED):
                continue
            pattern, handler = next((p, h) for p, h in HANDLERS if re.fullmatch(p, cmd))
            handler(ws, cmd, *re.fullmatch(pattern, cmd).groups())
