"""Production refuses to run on a public key, and `check --deploy` is clean with the documented
production settings (issue "hardening" #13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"


def run(code_or_args, tmp_path, **env) -> subprocess.CompletedProcess:
    """A fresh interpreter on openbili.settings (not the test settings), in a var/ of its own."""
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "OPENBILI_INSECURE_DEV_SECRET", "DEBUG")}
    base |= {"DJANGO_SETTINGS_MODULE": "openbili.settings", "OPENBILI_VAR_DIR": str(tmp_path)} | env
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)


def test_without_a_secret_key_it_refuses_to_serve_but_tooling_still_runs(tmp_path):
    # the ASGI app (what serves) refuses the public key
    serving = run("import openbili.asgi", tmp_path)
    assert serving.returncode != 0
    assert "SECRET_KEY is not set: refusing to serve" in serving.stderr
    # so does encrypting an upstream secret
    encrypting = run(
        SETUP.replace("print(settings.SECRET_KEY)", "from billing import crypto; crypto.encrypt('x')"), tmp_path
    )
    assert encrypting.returncode != 0 and "refusing to encrypt" in encrypting.stderr
    # tooling that needs no secret works, and check --deploy names the problem
    assert run(["manage.py", "makemigrations", "--check", "--dry-run"], tmp_path).returncode == 0
    deploy = run(["manage.py", "check", "--deploy"], tmp_path)
    assert deploy.returncode != 0 and "openbili.E001" in deploy.stderr


def test_it_serves_with_a_secret_key_with_the_run_commands_local_key_or_an_explicit_opt_out(tmp_path):
    serve = SETUP + "; import openbili.asgi"
    assert (
        run(serve, tmp_path, SECRET_KEY="s3cret-from-the-environment").stdout.strip() == "s3cret-from-the-environment"
    )
    (tmp_path / "secret-key").write_text("local-random-key\n")
    assert run(serve, tmp_path).stdout.strip() == "local-random-key"
    (tmp_path / "secret-key").unlink()
    opted_out = run(serve, tmp_path, OPENBILI_INSECURE_DEV_SECRET="1")
    assert opted_out.returncode == 0 and opted_out.stdout.strip().startswith("openbili-dev-only")


def test_the_run_command_keeps_one_random_local_key(tmp_path, monkeypatch):
    from openbili import launch

    monkeypatch.setattr(launch, "VAR_DIR", tmp_path)
    launch.ensure_local_secret_key()
    key = (tmp_path / "secret-key").read_text().strip()
    assert len(key) >= 60
    assert (tmp_path / "secret-key").stat().st_mode & 0o777 == 0o600
    launch.ensure_local_secret_key()  # a second run keeps it (sessions and encrypted secrets stay valid)
    assert (tmp_path / "secret-key").read_text().strip() == key


def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        tmp_path,
        SECRET_KEY="a-long-random-production-secret-" + "x" * 40,
        OPENBILI_HTTPS="1",
        ALLOWED_HOSTS="api.openbili.example",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout
