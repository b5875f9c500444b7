#!/usr/bin/env python3
"""A real Prometheus scrapes the real daemon (issue: observability).

Starts qlorad on loopback, starts Debian's `prometheus` with the scrape config and alert rules
from deploy/prometheus (target and interval replaced for the test), runs a fine-tune job, and asks
Prometheus's HTTP API: the memory series exist with sensible values, the trained-tokens counter
rises while the job runs, and the job's own series are gone after it ends. Also: every metric the
Grafana dashboard queries is one the daemon exports, and promtool accepts the config and rules.

  QLORAD_BINARY=build/server/qlorad python3 tests/integration/prometheus_test.py
Exits 77 (skipped) without the daemon binary, the test model, or the prometheus package.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
from pathlib import Path

SKIP = 77
REPO = Path(__file__).resolve().parent.parent.parent
BINARY = os.environ.get("QLORAD_BINARY", "")
MODELS = Path(os.environ.get("QLORAD_TEST_MODELS", str(REPO.parent / "shared" / "models")))
MODEL_PATH = MODELS / "stories260K" / "stories260K.gguf"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

for missing, why in ((not BINARY or not os.access(BINARY, os.X_OK), "QLORAD_BINARY"),
                     (not MODEL_PATH.is_file(), f"the test model {MODEL_PATH}"),
                     (not PROMETHEUS or not PROMTOOL, "prometheus/promtool (apt prometheus)")):
    if missing:
        print(f"prometheus_test: skipped, no {why}")
        sys.exit(SKIP)

sys.path.insert(0, str(REPO / "client" / "python"))
from qlorad_client import Client  # noqa: E402

KEY = "ops-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_file(path, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start in {timeout} s")


def alert_rules():
    """deploy/prometheus/alerts.yml's rules: alert name -> expression."""
    try:
        import yaml
    except ImportError:  # an interpreter outside Debian's (pyenv): the apt package python3-yaml
        sys.path.append("/usr/lib/python3/dist-packages")
        import yaml
    doc = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


class PrometheusTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="qlorad-prom-"))
        (cls.tmp / "tenants.json").write_text(json.dumps({"tenants": [{
            "name": "ops", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
            "admin": True}]}))
        cls.daemon_log = open(cls.tmp / "qlorad.log", "wb")
        cls.daemon = subprocess.Popen(
            [BINARY, "--listen", "127.0.0.1:0", "--port-file", str(cls.tmp / "port"),
             "--metrics-listen", "127.0.0.1:0", "--metrics-port-file", str(cls.tmp / "mport"),
             "--data-dir", str(cls.tmp / "data"), "--tenants", str(cls.tmp / "tenants.json"),
             "--devices", "cpu:0", "--threads-per-device", "1"],
            stdout=cls.daemon_log, stderr=cls.daemon_log)
        port = wait_file(cls.tmp / "port", cls.daemon, "qlorad")
        cls.metrics_port = int(wait_file(cls.tmp / "mport", cls.daemon, "qlorad"))
        cls.client = Client(f"127.0.0.1:{port}", token=KEY, timeout=120)

        # deploy/'s config, pointed at this daemon and scraping every second.
        config = (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
        config = config.replace("127.0.0.1:9477", f"127.0.0.1:{cls.metrics_port}")
        config = re.sub(r"scrape_interval: \S+", "scrape_interval: 1s", config)
        config = re.sub(r"evaluation_interval: \S+", "evaluation_interval: 1s", config)
        shutil.copy(REPO / "deploy" / "prometheus" / "alerts.yml", cls.tmp / "alerts.yml")
        (cls.tmp / "prometheus.yml").write_text(config)
        cls.prom_port = free_port()
        cls.prom_log = open(cls.tmp / "prometheus.log", "wb")
        cls.prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cls.tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={cls.tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{cls.prom_port}"],
            stdout=cls.prom_log, stderr=cls.prom_log)

    @classmethod
    def tearDownClass(cls):
        for proc in (cls.prom, cls.daemon):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cls.client.close()
        if not os.environ.get("QLORAD_KEEP_TMP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def query(self, expr):
        url = (f"http://127.0.0.1:{self.prom_port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        self.assertEqual(body["status"], "success", body)
        return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1])
                for s in body["data"]["result"]}

    def wait_for(self, expr, pred, what, timeout=90):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.query(expr)
                if pred(last):
                    return last
            except OSError:
                pass  # Prometheus still starting
            time.sleep(0.5)
        self.fail(f"{what}: {expr} gave {last}")

    def test_prometheus_scrapes_training_and_memory(self):
        self.wait_for('up{job="qlorad"}', lambda r: r and all(v == 1 for v in r.values()),
                      "the daemon is scraped")
        self.client.register_model("stories", str(MODEL_PATH))
        ds = self.client.upload_dataset(str(REPO / "tests" / "data" / "facts_train.jsonl"))
        job = self.client.create_job("stories", ds.id, rank=4, max_steps=100000, batch_size=8,
                                     seq_len=64, seed=3)
        job_sel = f'{{job_id="{job.id}"}}'
        self.wait_for("qlorad_job_progress_ratio" + job_sel, lambda r: len(r) == 1,
                      "the running job's progress")
        first = sum(self.wait_for("qlorad_trained_tokens_total", lambda r: r and sum(r.values()) > 0,
                                  "tokens trained").values())
        self.wait_for("qlorad_trained_tokens_total", lambda r: sum(r.values()) > first,
                      "the tokens counter rises while the job runs")
        self.wait_for("qlorad_job_loss" + job_sel, lambda r: len(r) == 1, "the job's loss")

        mem = self.query("qlorad_device_memory_bytes")
        states = {json.loads(k)["state"]: v for k, v in mem.items()}
        self.assertEqual(set(states), {"total", "used", "free"})
        self.assertGreater(states["total"], 0)
        self.assertGreater(states["used"], 0)
        self.assertAlmostEqual(states["used"] + states["free"], states["total"], delta=1)
        engine = {json.loads(k)["category"]: v
                  for k, v in self.query("qlorad_engine_memory_bytes").items()}
        self.assertEqual(set(engine), {"base_weights", "adapters", "optimizer_device",
                                       "optimizer_host", "activations", "workspace"})
        self.assertGreater(engine["base_weights"], 0)
        self.assertGreater(engine["adapters"], 0)
        self.assertEqual(sum(self.query("qlorad_base_models_loaded").values()), 1)
        self.wait_for('qlorad_jobs{state="RUNNING"}', lambda r: sum(r.values()) == 1,
                      "one running job")

        self.client.cancel_job(job.id)
        self.client.wait_job(job.id, timeout=120)
        # Gone from the exposition, the series go stale in Prometheus at the next scrape.
        self.wait_for("qlorad_job_loss" + job_sel, lambda r: len(r) == 0,
                      "the ended job's loss series disappears")
        self.wait_for("qlorad_job_progress_ratio" + job_sel, lambda r: len(r) == 0,
                      "the ended job's progress series disappears")
        self.wait_for('qlorad_jobs_finished_total{result="cancelled"}',
                      lambda r: sum(r.values()) == 1, "the cancelled job is counted")

        # Every alert selects series on a live daemon: each comparison made a `bool` one (0 or 1
        # per series, none filtered out), the rule must give at least one series. A rule whose
        # sides never match (a label on one side only) gives none, and so could never fire.
        for name, expr in alert_rules().items():
            as_bool = re.sub(r" (==|!=|>=|<=|>|<) ", r" \1 bool ", expr)
            self.wait_for(as_bool, lambda r: len(r) > 0, f"alert {name} selects series")

    def test_dashboard_queries_only_exported_metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            exposition = r.read().decode()
        exported = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M))
        names = {n for n, _ in exported}
        names |= {n + s for n, t in exported if t == "histogram"
                  for s in ("_bucket", "_sum", "_count")}
        dashboard = json.loads((REPO / "deploy" / "grafana" / "qlorad-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        exprs.append(dashboard["templating"]["list"][0]["query"])
        used = set()
        for e in exprs:
            used |= set(re.findall(r"\b((?:qlorad|process)_[a-z_]+)\b", e))
        self.assertTrue(used)
        self.assertEqual(sorted(used - names), [], "dashboard metrics the daemon does not export")
        titles = " ".join(p["title"] for p in dashboard["panels"])
        for panel in ("Device memory", "Engine memory", "Base models", "Jobs by state",
                      "Queue depth", "Tokens per second", "Step time", "Loss", "Devices up",
                      "Admission", "Inference memory"):
            self.assertIn(panel, titles)

    def test_promtool_accepts_config_and_rules(self):
        for args in (["check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
                     ["check", "rules", str(REPO / "deploy" / "prometheus" / "alerts.yml")]):
            r = subprocess.run([PROMTOOL] + args, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    prog = unittest.main(exit=False)
    ok = prog.result.wasSuccessful()
    if not ok:
        for name in ("qlorad.log", "prometheus.log"):
            try:
                text = (PrometheusTest.tmp / name).read_text(errors="replace")
                print(f"--- {name} (tail)\n{text[-6000:]}", file=sys.stderr)
            except (AttributeError, OSError):
                pass
    sys.exit(0 if ok else 1)
