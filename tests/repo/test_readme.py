"""Every command the README prints is run by a test (or by `make demo`), or says why it cannot be.

The commands are read from the README's ```bash blocks (continuation lines joined, trailing
comments dropped); the ```python blocks are run by tests/repo/test_demo_readme.py after the demo.
"""
from __future__ import annotations

import re
import shlex

from tests.support import ROOT

README = (ROOT / "README.md").read_text()

# commands run by a named test, verbatim (the test file must contain the command's text)
VERBATIM = {
    "python pipelines/train.py -c configs/sdxl.yaml":
        "tests/pipelines/test_cli.py::test_readme_sdxl_train_command_refuses_without_gpus",
}
# commands a test runs in an equivalent form (what differs is said)
EQUIVALENT = {
    "export RAY_AUTH_MODE=token": "tests/pipelines/test_ingest.py::test_ray_job_submit (sets it for its ray start)",
    "ray start --head --num-cpus 2": "tests/pipelines/test_ingest.py::test_ray_job_submit (on a free port)",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- "
    "python pipelines/full.py --config configs/demo.yaml lake=$PWD/lake":
        "tests/pipelines/test_ingest.py::test_ray_job_submit (its own ports, a scratch lake, crawl and filter only)",
    "ray stop": "tests/pipelines/test_ingest.py::test_ray_job_submit (stops the cluster it started)",
    "make test": ".ci/run (CI runs exactly `make test`)",
    "source .venv/bin/activate": "the tests run with the virtual environment's python",
    "python -m model.convert_official --supir SUPIR-v0Q.ckpt --sdxl /models/sd_xl_base_1.0_0.9vae.safetensors "
    "--out checkpoints/supir-v0Q [--register supir@official]":
        "tests/pipelines/test_restore_sdxl_size.py::test_sdxl_size_convert_and_restore_on_cpu (a random file in the released layout, "
        "the sdxl preset's random prior; --register: tests/model/test_convert_official.py)",
    "python pipelines/restore.py --input photos/ --output restored/ restore.model=checkpoints/supir-v0Q "
    "restore.sampler.preset=released [restore.upscale=2] [restore.prior=/models/sd_xl_base_1.0_0.9vae.safetensors]":
        "tests/pipelines/test_restore_sdxl_size.py::test_sdxl_size_convert_and_restore_on_cpu (2 steps, restore.min_size=128, bf16 on CPU)",
}
# commands no test can run here, and why
NOT_RUN = {
    "mlflow ui --backend-store-uri sqlite:///$PWD/lake/mlflow.db":
        "a server that runs until stopped; test_demo_readme reads the store it serves",
    "ray up ray_cluster.yaml": "needs an AWS account (tests/pipelines/test_cluster.py validates the file against Ray's schema)",
    "ray dashboard ray_cluster.yaml &": "needs the AWS cluster of `ray up`",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/full.py --config "
    "configs/sdxl.yaml lake=s3://bucket/lake tracking.uri=http://<head IP>:5000": "needs the GPU cluster of `ray up`",
    "ray down ray_cluster.yaml": "needs the AWS cluster of `ray up`",
}


def readme_commands(text: str = README) -> list[str]:
    """The shell commands of the ```bash blocks, one string each."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending, continued = "", False
        for line in block.splitlines():
            line = re.split(r"\s{2,}#\s", line)[0].rstrip() if not pending or continued else line
            if not line.strip() and not pending:
                continue
            pending = (pending + line if continued else f"{pending}\n{line}") if pending else line
            continued = pending.endswith("\\")
            if continued:
                pending = pending[:-1].rstrip() + " "
                continue
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: a multi-line argument
                continue
            out.append(re.sub(r"[ \t]+", " ", pending).strip())
            pending = ""
    return out


def test_readme_commands_are_parsed():
    cmds = readme_commands()
    assert "make demo" in cmds and "python -m catalog.sql --list" in cmds
    assert any(c.startswith('python -m catalog.sql "\n') and "GROUP BY ALL" in c for c in cmds)
    assert all("#" not in c.split('"')[0] for c in cmds if not c.startswith("python -c"))


def test_every_readme_command_is_run_by_a_test():
    from tests.repo.test_demo_readme import AFTER_DEMO, DEMO, DEMO_RUN2, SQL_COMPARE

    make = (ROOT / "Makefile").read_text()
    assert "\t$(PY) pipelines/full.py --config configs/demo.yaml $(ARGS)" in make  # what `make demo` runs
    run_by_demo_test = {"make demo", "python pipelines/full.py --config configs/demo.yaml", DEMO_RUN2,
                        'make demo ARGS="restore.sampler.tau_r=0 tracking.run_name=no-restoration-guidance"',
                        SQL_COMPARE, *AFTER_DEMO}
    assert DEMO == "python pipelines/full.py --config configs/demo.yaml"
    unknown = [c for c in readme_commands()
               if c not in run_by_demo_test and c not in VERBATIM and c not in EQUIVALENT and c not in NOT_RUN]
    assert not unknown, f"README commands no test runs: {unknown}"
    for cmd, test in VERBATIM.items():
        path, name = test.split("::")
        source = (ROOT / path).read_text()
        assert f"def {name}(" in source and cmd in source, test
    for test in EQUIVALENT.values():
        if "::" in test:
            path, name = test.split(" ")[0].split("::")
            assert f"def {name}(" in (ROOT / path).read_text(), test


def test_readme_python_blocks_are_the_ones_the_demo_test_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 2
    assert any("mlflow.pyfunc.load_model" in b for b in blocks) and any("search_runs" in b for b in blocks)


def test_no_dangling_references():
    """Files the README names exist in the checkout (or are made by a command it shows first)."""
    top = ("pipelines/", "stages/", "model/", "evaluation/", "catalog/", "configs/", "data/", "bench/", "tests/",
           ".ci/", "Makefile", "ray_cluster.yaml", "pyproject.toml")
    refs = re.findall(r"`([\w./-]+)`", README) + re.findall(r"[ (]((?:pipelines|stages|model|evaluation|catalog|"
                                                          r"configs|bench|tests)/[\w./-]+\.\w+)", README)
    checked = 0
    for ref in refs:
        ref = ref.removeprefix("./").split("::")[0].rstrip(".,")
        if not ref.startswith(top) or any(ch in ref for ch in "<*{"):
            continue
        checked += 1
        assert (ROOT / ref).exists(), ref
    assert checked > 20
    assert "../shared" not in README and "DESIGN section" not in README
