"""Install the client libraries the tests drive that pip's test extra cannot: Java's
kafka-clients 3.9 jars (shipped inside a PyPI wheel, as shared/CLIENTS.md describes) and
KafkaJS (npm). Idempotent: does nothing when they are already in place.

    python -m tests.clients.prepare
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = ROOT.parent.parent / ".kelp" / "clients"
JAVA_LIB = CACHE / "java-lib"
JARS = ("kafka-clients", "slf4j-api", "lz4-java", "snappy-java", "zstd-jni")
WHEEL = "shigawire-apache-flink-libraries==2.0.0.post1"
JS_DIR = ROOT / "js"


def java_jars() -> list[Path]:
    return [JAVA_LIB / f"{name}.jar" for name in JARS]


def prepare_java() -> None:
    if all(jar.exists() for jar in java_jars()):
        return
    JAVA_LIB.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL,
                        "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in JARS:
                with archive.open(f"pyflink/lib/{name}.jar") as source, \
                        open(JAVA_LIB / f"{name}.jar", "wb") as target:
                    shutil.copyfileobj(source, target)


def prepare_js() -> None:
    if (JS_DIR / "node_modules" / "kafkajs").exists() or not (JS_DIR / "package.json").exists():
        return
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=JS_DIR,
                   check=True)


def _compiled(main_class: str, work_dir: Path, timeout: float) -> list[str]:
    """Compile ``java/<main_class>.java`` into ``work_dir``; the command that runs it."""
    prepare_java()  # a no-op when `just test` already fetched the jars
    classes = work_dir / "classes"
    classpath = ":".join(str(jar) for jar in java_jars())
    subprocess.run(["javac", "-d", str(classes), "-cp", classpath,
                    str(ROOT / "java" / f"{main_class}.java")], check=True, timeout=timeout)
    return ["java", "-cp", f"{classes}:{classpath}", main_class]


def run_java(main_class: str, args: list[str], work_dir: Path,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Compile ``java/<main_class>.java`` into ``work_dir`` and run it with ``args``."""
    return subprocess.run([*_compiled(main_class, work_dir, timeout), *args],
                          capture_output=True, text=True, timeout=timeout)


def start_java(main_class: str, args: list[str], work_dir: Path,
               timeout: float = 180) -> subprocess.Popen[str]:
    """The same, started with pipes to talk to it (the caller waits for it or kills it)."""
    return subprocess.Popen([*_compiled(main_class, work_dir, timeout), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


if __name__ == "__main__":
    prepare_java()
    prepare_js()
    print(f"clients ready in {CACHE} and {JS_DIR}")

