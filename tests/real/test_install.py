"""fpcancel installed into a shop's environment (SPEC.md, "Python API"): one top-level import
name, and a shop whose own `models`, `worker` and `migrations` come first on `sys.path` keeps
them, while fpcancel keeps its own."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]

SHOP = {
    "models.py": "KIND = 'the shop models'\n",
    "worker.py": "KIND = 'the shop worker'\n",
    "migrations/__init__.py": "KIND = 'the shop migrations'\n",
    "cancel_order.py": """
import json, sys

import migrations, models, worker  # the shop's own, first on sys.path

import fpcancel

job_id = fpcancel.enqueue_cancel(sys.argv[1], "Customer asked to cancel", source="shop")
job = fpcancel.get_job(job_id)
print(json.dumps({
    "job": job_id,
    "status": job["status"],
    "shop": [models.KIND, worker.KIND, migrations.KIND],
    "fpcancel": fpcancel.__file__,
}))
""",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with fpcancel installed from this checkout (not editable)."""
    where = tmp_path_factory.mktemp("shop-venv")
    venv.create(where, with_pip=True)
    done = subprocess.run(
        [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return where


def test_fpcancel_adds_one_top_level_name(installed: Path) -> None:
    """The wheel's top-level names: `fpcancel` only (no `worker`, `models` or `migrations`)."""
    site = next((installed / "lib").glob("python3*/site-packages"))
    tops = next(site.glob("fpcancel-*.dist-info")) / "top_level.txt"
    names = tops.read_text().split() if tops.exists() else []
    installed_dirs = {p.name for p in site.iterdir() if p.is_dir()}
    assert "fpcancel" in installed_dirs
    assert not {"worker", "models", "migrations"} & installed_dirs
    assert set(names) <= {"fpcancel"}


def test_a_shop_with_its_own_models_worker_and_migrations_enqueues(
    installed: Path, tmp_path: Path, database_url: str, broker_url: str
) -> None:
    """From the shop's directory (its modules first on sys.path): `fpcancel db upgrade` migrates
    with fpcancel's own models, and `fpcancel.enqueue_cancel` makes a job; the shop's modules
    are the shop's."""
    shop = tmp_path / "shop"
    for name, text in SHOP.items():
        (shop / name).parent.mkdir(parents=True, exist_ok=True)
        (shop / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FPCANCEL_", "FRONTPAYMENT_"))}
    env.update(
        PYTHONPATH=str(shop),
        FPCANCEL_DATABASE_URL=database_url,
        FPCANCEL_BROKER_URL=broker_url,
    )
    env.pop("VIRTUAL_ENV", None)
    upgrade = subprocess.run(
        [str(installed / "bin" / "fpcancel"), "db", "upgrade"],
        cwd=shop,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    run = subprocess.run(
        [str(installed / "bin" / "python"), "cancel_order.py", "ODR123456789"],
        cwd=shop,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["status"] == "queued" and out["job"] >= 1
    assert out["shop"] == ["the shop models", "the shop worker", "the shop migrations"]
    assert str(installed) in out["fpcancel"] and sys.prefix not in out["fpcancel"]


def test_the_installed_wheel_carries_the_web_app_its_templates_and_style_sheet(
    installed: Path,
) -> None:
    """`fpcancel.web` is in the wheel with its package data: every template compiles, the style
    sheet is there, and `fpcancel serve --help` runs."""
    check = (
        "from fpcancel.web.app import STATIC, TEMPLATES, templates\n"
        "names = sorted(p.name for p in TEMPLATES.glob('*.html'))\n"
        "env = templates()\n"
        "for name in names: env.get_template(name)\n"
        "assert (STATIC / 'fpcancel.css').stat().st_size > 1000\n"
        "print(' '.join(names))\n"
    )
    done = subprocess.run(
        [str(installed / "bin" / "python"), "-c", check],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=installed,
    )
    assert done.returncode == 0, done.stderr
    assert {
        "base.html",
        "job.html",
        "jobs.html",
        "overview.html",
        "signin.html",
        "upload.html",
    } <= set(done.stdout.split())
    serve = subprocess.run(
        [str(installed / "bin" / "fpcancel"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 0 and "dashboard" in serve.stdout
