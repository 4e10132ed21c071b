"""One run over several devices (samedge.sharding), checked on 4 virtual CPU devices.

The multi-device checks run in one subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
set before JAX is imported (this process's JAX already has its single CPU device). The child
prints one JSON object of relative differences and shardings, and the tests here judge it.

Truths: the same computation on one device. At fixed parameters the loss, the gradient, one SAM
step, an HVP and a whole measurement agree over 1, 2 and 4 devices to 1e-5 relative (only the
order of the additions differs); so do they for a batch that does not divide over the devices
(254 examples on 4 devices: padded, the padding cancelled) against the task unsharded; 100 SAM
steps of a small MNIST run give the same rows to 1e-4 on 1, 2 and 4 devices; a checkpoint
written by the 2-device run continues on 1 and on 4 devices to the rows of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from samedge import sharding
from samedge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, shutil, sys
import jax, jax.numpy as jnp, numpy as np
from jax.flatten_util import ravel_pytree
import time
from samedge import checkpoint, config, curvature, jit_cache, optimizers, sharding, tasks, train
from samedge.errors import ConfigError
from samedge.store import RunStore

DATA, TMP = os.environ["SAMEDGE_DATA_DIR"], sys.argv[1]
# The resumed runs compile what the uninterrupted ones did: a private persistent cache saves that.
jit_cache.enable(os.path.join(TMP, "jit"))
T0 = time.perf_counter()
TIMES = {}


def lap(name):
    TIMES[name] = (round(time.perf_counter() - T0, 1), round(time.process_time(), 1))


SMALL = dict(n_train=256, n_test=256, width=32, depth=3)
out = {"device_count": jax.device_count()}
opt = optimizers.build("sam", 0.1, rho=0.1)
cfg = config.resolve("mnist", "quick", task_overrides=SMALL, optimizer="sam", lr=0.1, rho=0.1, steps=100,
                     measure_every=20, checkpoint_every=60)
ROW_KEYS = ("loss", "grad_norm", "lambda_max", "lambda_1", "edge", "ratio", "acc", "align_grad", "align_sam_grad")


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def flat(tree):
    return ravel_pytree(tree)[0]


def build(**over):
    return tasks.build_task("mnist", tasks.make_task_config("mnist", SMALL | over), data_dir=DATA)


def replicated(tree):
    return all(x.sharding.is_fully_replicated for x in jax.tree.leaves(tree))


def quantities(t, v, with_measurement=True):
    # loss, gradient, one SAM step, an HVP and the run's measurement (its step-0 row) at the initial parameters
    p = t.init_params(jax.random.PRNGKey(0))

    @jax.jit
    def f(p, data, v):
        batch = t.batch_fn(data, jnp.asarray(0))
        grad_fn = jax.value_and_grad(lambda q: t.loss_fn(q, batch))
        loss, g = grad_fn(p)
        hv = curvature.flat_hvp(lambda q: t.loss_fn(q, batch), p)[0](v)
        p2, _, _ = opt.update(p, opt.init(p), grad_fn)
        return loss, g, hv, p2

    loss, g, hv, p2 = f(p, t.data, v)
    got = dict(loss=float(loss), grad=np.asarray(flat(g)), hvp=np.asarray(hv), step=np.asarray(flat(p2) - flat(p)))
    layout = {"params": replicated(p), "grad": replicated(g), "hvp": replicated(hv), "step": replicated(p2)}
    if with_measurement:
        _, init, measure = train._make_measure(cfg, t, opt)  # the very program train() runs (the cache has it then)
        row, state = measure(p, t.data, jnp.asarray(0), init(p), opt.init(p))
        got |= dict(row={k: float(row[k]) for k in ROW_KEYS}, vectors=np.asarray(state.vectors))
        layout["vectors"] = replicated(state.vectors)
    return got, layout


def compare(a, b):
    d = {k: rel(a[k], b[k]) for k in ("loss", "grad", "hvp", "step")}
    if "row" in a:
        d |= {"row_" + k: rel(a["row"][k], b["row"][k]) for k in ROW_KEYS}
        d["vectors"] = rel(np.abs(a["vectors"]), np.abs(b["vectors"]))  # eigenvectors up to sign
    return d


# 1. Fixed parameters, 1 / 2 / 4 devices.
base = build()
v = jax.random.normal(jax.random.PRNGKey(1), flat(base.init_params(jax.random.PRNGKey(0))).shape)
fixed, layouts = {}, {}
for n in (1, 2, 4):
    t = sharding.shard_task(base, sharding.devices_for(n))
    out.setdefault("data", {})[n] = [[list(x.sharding.spec), len(x.addressable_shards),
                                      list(x.addressable_shards[0].data.shape)] for x in jax.tree.leaves(t.data)]
    fixed[n], layouts[n] = quantities(t, v)
out["layout"] = layouts
out["fixed"] = {n: compare(fixed[1], fixed[n]) for n in (2, 4)}
lap("fixed")

# 2. A batch that does not divide: 254 examples on 4 devices (2 padding rows), against the task unsharded.
odd = build(n_train=254)
t = sharding.shard_task(odd, sharding.devices_for(4))
out["odd_batch"] = repr(t.batch_fn(t.data, jnp.asarray(0)))
out["odd_data"] = [[list(x.sharding.spec), list(x.shape)] for x in jax.tree.leaves(t.data)]
out["odd"] = compare(quantities(odd, v, False)[0], quantities(t, v, False)[0])
try:
    sharding.shard_task(odd, sharding.devices_for(4), uneven="refuse")
except ConfigError as exc:
    out["refused"] = str(exc)
lap("odd")

# 3. 100 SAM steps on 1 / 2 / 4 devices; the 2-device run checkpoints at step 60, which 1 and 4 continue.
rows, resumed = {}, {}
for n in (2, 1, 4):
    t = sharding.shard_task(base, sharding.devices_for(n))
    rows[n] = []
    store = None
    if n == 2:
        store = RunStore.create(os.path.join(TMP, "run2"), {"run": cfg.to_dict(), "task_info": t.info})
    summary = train.train(cfg, t, store, progress=False, on_row=rows[n].append)
    assert summary["status"] == "completed", summary
    if n == 2:
        p0 = t.init_params(jax.random.PRNGKey(0))
        out["checkpoint_step"] = checkpoint.load(store.path, p0, opt.init(p0)).step
    else:
        folder = os.path.join(TMP, f"resume{n}")
        shutil.copytree(os.path.join(TMP, "run2"), folder)
        resumed[n] = []
        s = train.train(cfg, t, RunStore.reopen(folder, t.info), progress=False, resume=True, on_row=resumed[n].append)
        assert s["status"] == "completed" and s["resumed_from"] == 60, s
    lap(f"train{n}")
COLS = ("loss", "lambda_max", "grad_norm", "edge", "ratio", "acc", "test_loss", "test_acc")


def rows_rel(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b], ([r["step"] for r in a], [r["step"] for r in b])
    return {c: max(rel(x[c], y[c]) for x, y in zip(a, b) if c in x) for c in COLS}


out["steps"] = [r["step"] for r in rows[1]]
out["trajectory"] = {n: rows_rel(rows[1], rows[n]) for n in (2, 4)}
out["resumed_steps"] = {n: [r["step"] for r in resumed[n]] for n in resumed}
out["resumed"] = {n: rows_rel(rows[1][-len(resumed[n]):], resumed[n]) for n in resumed}
out["ratio_last"] = rows[1][-1]["ratio"]

# 4. shakespeare: the tokens replicated, the gathered windows split (30 on 4 devices: padded), a
# fixed measurement batch of 18 windows split (padded to 20); the losses as unsharded.
sh = tasks.build_task("shakespeare", tasks.make_task_config("shakespeare", dict(
    seq_len=8, batch_size=30, d_model=8, n_layers=1, n_heads=1, key_size=8, mlp_ratio=1, eval_windows=8,
    measure_batch=18)), data_dir=DATA)
t = sharding.shard_task(sh, sharding.devices_for(4))
out["sh_data"] = {k: [list(x.sharding.spec), list(x.shape), len(x.addressable_shards)] for k, x in t.data.items()}
p = sh.init_params(jax.random.PRNGKey(0))


def losses(task):
    def f(p, d):
        batch = task.batch_fn(d, jnp.asarray(7))
        return task.loss_fn(p, batch), task.loss_fn(p, task.measure_batch_fn(d, jnp.asarray(7))), batch

    return jax.jit(f)(p, task.data)


a, b = losses(sh), losses(t)
out["sh_batch"] = [type(b[2]).__name__, [list(x.sharding.spec) for x in jax.tree.leaves(b[2])]]
out["sh"] = {"loss": rel(a[0], b[0]), "measure_loss": rel(a[1], b[1])}
lap("shakespeare")

# What run.execute calls: all devices by default, one device leaves the task alone, no double split.
split = sharding.for_run(base)
out["for_run"] = {"all": sharding.is_sharded(split) and len(jax.tree.leaves(split.data)[0].addressable_shards) == 4,
                  "one": sharding.for_run(base, 1) is base and not sharding.is_sharded(base),
                  "again": sharding.for_run(split) is split and sharding.for_run(split, 2) is split}

# 5. What one machine can say about several hosts: devices_for takes the global devices, the mesh
# spans them, the multi-process placement gives the same arrays, a subset is refused with 2 processes.
mesh = sharding.make_mesh(sharding.devices_for())
x = np.arange(48.0, dtype=np.float32).reshape(12, 4)
a = sharding._put(x, sharding.batch_sharding(mesh), process_local=True)
b = sharding._put(x, sharding.batch_sharding(mesh), process_local=False)
out["hosts"] = {
    "global": sharding.devices_for() == jax.devices(),
    "mesh": sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices()),
    "axis": [list(mesh.axis_names), str(mesh.axis_types[0])],
    "process_local_same": bool(np.array_equal(np.asarray(a), x)) and a.sharding == b.sharding
                          and [s.index for s in a.addressable_shards] == [s.index for s in b.addressable_shards],
}
try:
    sharding.devices_for(5)
except ConfigError as exc:
    out["hosts"]["too_many"] = str(exc)
count = jax.process_count
jax.process_count = lambda: 2
try:
    sharding.devices_for(2)
except ConfigError as exc:
    out["hosts"]["subset"] = str(exc)
finally:
    jax.process_count = count
lap("hosts")

# 6. Chunks within each device's share of the batch (samedge.chunking, chunk first, then split):
# 256 examples on 2 devices in chunks of 50 per device (50, 50, 28 of each 128), and 254 on 4 devices
# (padded to 256: 64 each, chunks of 30, 30 and 4), against the task unsharded and unchunked.
from samedge import chunking
out["chunked"] = {}
for n, plain, c in ((2, base, 50), (4, odd, 30)):
    t = sharding.shard_task(chunking.chunk_task(plain, c, groups=n), sharding.devices_for(n))
    out["chunked"][n] = compare(quantities(plain, v, False)[0], quantities(t, v, False)[0])
lap("chunked")

# 7. A model with state (BatchNorm): 10 steps of SAM with momentum on 2 devices as on one (the
# statistics of the whole batch, the running statistics replicated); a padded batch is refused.
import flax.linen as nn


class BN(nn.Module):
    @nn.compact
    def __call__(self, x, *, use_running_average, deterministic=True):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=use_running_average, momentum=0.9)(x)
        return nn.Dense(10)(nn.relu(x))


xs, ys = np.asarray(base.data[0]), np.asarray(base.data[1]).argmax(-1).astype(np.int32)
opt_m = optimizers.build("sam_momentum", 0.1, rho=0.05, momentum=0.9)


def bn_task(batch_size):
    return tasks.stateful_classification("bn", None, BN(), (xs, ys), (xs[:64], ys[:64]), source="mnist",
                                         batch_size=batch_size)


def ten_steps(t):
    p, s = t.init_params(jax.random.PRNGKey(0)), t.init_state(jax.random.PRNGKey(0))
    p, _, s, losses = train.make_chunk(t, opt_m, 10)(p, opt_m.init(p), s, t.data, jnp.asarray(0))
    return p, s, losses


one, two = ten_steps(bn_task(64)), ten_steps(sharding.shard_task(bn_task(64), sharding.devices_for(2)))
out["stateful"] = {"params": rel(flat(one[0]), flat(two[0])), "state": rel(flat(one[1]), flat(two[1])),
                   "losses": rel(one[2], two[2]), "moved": rel(flat(one[1]), flat(bn_task(64).init_state(
                       jax.random.PRNGKey(0)))), "replicated": replicated(two[1])}
try:
    sharding.shard_task(bn_task(62), sharding.devices_for(4))
except ConfigError as exc:
    out["stateful_refused"] = str(exc)
lap("stateful")
out["times"] = TIMES
print("RESULT " + json.dumps(out))
"""


def _env(data_dir) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               SAMEDGE_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@pytest.fixture(scope="module")
def four_devices(data_dir, tmp_path_factory):
    """The child's JSON (run once for the module's tests)."""
    tmp = tmp_path_factory.mktemp("sharding")
    env = _env(data_dir) | {"SAMEDGE_CACHE_DIR": str(tmp / "cache"), "SAMEDGE_OFFLINE": "1", "SAMEDGE_JIT_CACHE": "off"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp)], env=env, cwd=tmp, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, \
        f"child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _close(diffs: dict, tol: float) -> dict:
    return {k: v for k, v in diffs.items() if not v <= tol}


def test_chunked_on_two_and_four_devices(four_devices):
    """Chunks within each device's share: loss, gradient, one SAM step and an HVP as on one device
    in one pass, also with a batch padded to divide over 4 devices."""
    for n, diffs in four_devices["chunked"].items():
        assert not _close(diffs, 1e-5), (n, diffs)


def test_data_is_split_and_the_rest_replicated(four_devices):
    r = four_devices
    assert r["device_count"] == 4
    for n in ("1", "2", "4"):  # x (256, 784) and y (256, 10): n shards of 256 / n rows
        assert r["data"][n] == [[["batch"], int(n), [256 // int(n), 784]], [["batch"], int(n), [256 // int(n), 10]]]
        # parameters, gradients, HVPs, the stepped parameters and the Lanczos vectors: replicated
        assert all(r["layout"][n].values()), r["layout"][n]
    sh = dict(r["sh_data"])
    assert sh.pop("tokens")[::2] == [[], 4]  # the token stream: replicated (4 whole copies)
    assert sh.pop("measure") == [["batch"], [20, 9], 4]  # the fixed measurement batch: 18 + 2 rows, split
    assert all(spec == [] for spec, _, _ in sh.values()), sh  # anything else the task keeps: replicated
    assert r["sh_batch"] == ["PaddedBatch", [["batch"], []]]  # 30 windows + 2 split, the 2 replicated


def test_fixed_parameters_agree_over_devices(four_devices):
    for n in ("2", "4"):
        assert not _close(four_devices["fixed"][n], 1e-5), four_devices["fixed"][n]


def test_uneven_batch_is_padded_exactly_or_refused(four_devices):
    r = four_devices
    assert r["odd_batch"] == "PaddedBatch(n=254, pad=2)"
    assert r["odd_data"] == [[["batch"], [256, 784]], [["batch"], [256, 10]]]
    assert not _close(r["odd"], 1e-5), r["odd"]
    assert not _close(r["sh"], 1e-5), r["sh"]
    assert r["refused"] == ("task 'mnist': the batch of 254 examples does not divide over 4 devices; "
                            "use a batch of 252, 256 (a multiple of 4), or 2 devices")


def test_training_rows_agree_over_devices(four_devices):
    r = four_devices
    assert r["steps"] == [0, 20, 40, 60, 80, 100]
    assert r["ratio_last"] > 0.1  # the rows are not trivial: lambda_max is a fair part of the SAM-edge
    for n in ("2", "4"):
        assert not _close(r["trajectory"][n], 1e-4), r["trajectory"][n]


def test_checkpoint_from_two_devices_continues_on_one_and_four(four_devices):
    r = four_devices
    assert r["checkpoint_step"] == 60
    for n in ("1", "4"):
        assert r["resumed_steps"][n] == [80, 100]
        assert not _close(r["resumed"][n], 1e-4), r["resumed"][n]


def test_for_run(four_devices):
    assert four_devices["for_run"] == {"all": True, "one": True, "again": True}


def test_several_hosts_what_one_machine_can_check(four_devices):
    h = four_devices["hosts"]
    assert h["global"] and h["mesh"] and h["process_local_same"]
    assert h["axis"] == [["batch"], "AxisType.Auto"]
    assert "--devices 5: only 4 cpu devices here (1 process)" in h["too_many"]
    assert "uses all 4 devices" in h["subset"]


def test_devices_for_in_this_process():
    assert sharding.devices_for() == jax.devices()
    assert sharding.devices_for(1) == jax.devices()[:1]
    n = jax.device_count() + 1
    with pytest.raises(ConfigError, match=f"--devices {n}: only {n - 1} cpu device.*xla_force_host_platform"):
        sharding.devices_for(n)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="positive integer"):
            sharding.devices_for(bad)
    with pytest.raises(ConfigError, match="uneven must be one of"):
        sharding.shard_task(None, sharding.devices_for(1), uneven="drop")


def test_batches_without_an_example_axis_are_refused():
    import jax.numpy as jnp

    from samedge import tasks

    task = tasks.make_task("quad", lambda k: {"w": jnp.ones(3)}, lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2),
                           jnp.array([3.0, 1.0, 0.5]))
    assert sharding.shard_task(task, sharding.devices_for(1)).data.shape == (3,)  # a vector: 3 "examples"
    scalar = tasks.make_task("s", lambda k: {"w": jnp.ones(())}, lambda p, b: p["w"] ** 2 * b, jnp.asarray(2.0))
    with pytest.raises(ConfigError, match="share a leading example axis"):
        sharding.shard_task(scalar, sharding.devices_for(1))


GPU_CHECK_KEYS = {"device", "devices", "jax", "jaxlib", "cuda", "tiny", "mnist_sam_step_ms", "mnist_chunk_compile_s",
                  "mnist_hvp_ms", "mnist_measure_s", "mnist_measure_compile_s", "mnist_lanczos",
                  "mnist_lanczos_default_s", "mnist_lanczos_highest_s", "highest_vs_default_rel",
                  "shakespeare_sam_step_ms", "shakespeare_measure_s", "run_steps", "run_rows", "run_ratio",
                  "run_lambda_max", "run_edge", "peak_memory_mb", "peak_memory_source", "projected_hours",
                  "projection", "total_s", "scale"}


def test_gpu_check_tiny(data_dir, tmp_path):
    env = _env(data_dir) | {"XLA_FLAGS": "", "SAMEDGE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--data-dir",
                           str(data_dir)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # one JSON line and nothing else on stdout
    result = json.loads(lines[0])
    assert GPU_CHECK_KEYS <= set(result), GPU_CHECK_KEYS - set(result)
    assert result["tiny"] is True and result["device"].startswith("cpu")
    assert set(result["projected_hours"]) == {"mnist_paper_grid", "shakespeare_paper_grid"}
    assert result["highest_vs_default_rel"] < 1e-3 and result["run_ratio"] > 0 and result["run_steps"] == 40
    assert result["shakespeare_measure_s"] is None  # --tiny leaves it out (its CPU compile)
    assert result["projection"]["mnist"]["points"] == 12 and result["projection"]["shakespeare"]["points"] == 24
    (scale,) = result["scale"]  # one tiny scale point: 10^5 parameters measured to the tolerance
    assert scale["n"] > 9e4 and scale["cold_resid"] <= 1e-3 and scale["warm_resid"] <= 1e-3
    # the ResNet's paper-preset steps ran (width 2 here), its measurement left out under --tiny
    assert "resnet_error" not in result and result["resnet_sam_step_ms"] > 0 and result["resnet_measure_s"] is None
    assert result["resnet_epoch_s"] == pytest.approx(391 * result["resnet_sam_step_ms"] / 1e3)


def test_model_state_sharded_like_the_parameters(four_devices):
    got = four_devices["stateful"]
    assert got["replicated"] and got["moved"] > 1e-3, got
    assert max(got["params"], got["state"], got["losses"]) <= 1e-5, got
    assert "model state" in four_devices["stateful_refused"] and "62" in four_devices["stateful_refused"]
