"""Drives `cargo generate` as a user at a 160-column terminal would (a pseudo-terminal),
once per answer path, and checks the questions asked, exactly:

- the defaults: every question of template/cargo-generate.toml but `chain`, in order;
- resolution=chain: `chain` asked once, after the others, and the project has the chosen
  resolvers;
- resolution=chain with a bad chain: the pre hook's message, and no project;
- every question fits on one line; after generation the post hook names what was chosen
  and the next commands;
- README.md's prompt table lists the same questions, word for word, in the same order.

Usage: python3 ci/interactive.py (needs cargo-generate on the PATH). Exits non-zero on
the first failed check, saying which.
"""

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import sys
import tempfile
import termios
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = 160
DOWN, ENTER = "\x1b[B", "\r"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

with open(os.path.join(ROOT, "template", "cargo-generate.toml"), "rb") as f:
    CONFIG = tomllib.load(f)
PROMPTS = {name: p["prompt"] for name, p in CONFIG["placeholders"].items()}
for condition in CONFIG.get("conditional", {}).values():
    PROMPTS.update({name: p["prompt"] for name, p in condition.get("placeholders", {}).items()})
ORDER = list(CONFIG["placeholders"])  # the unconditional questions, in order


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def generate(answers):
    """Runs cargo generate in a pseudo-terminal; `answers` are (question name, keys)
    pairs, each sent once its question is shown. Returns (exit status, screen text,
    project folder)."""
    dest = tempfile.mkdtemp(prefix="actix-tenancy-interactive-")
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(CARGO_NAME="ci", COLUMNS=str(COLUMNS), RUST_BACKTRACE="0")
        os.execvp("cargo", ["cargo", "generate", "--path", ROOT, "template", "--name", "demo",
                            "--vcs", "none", "--destination", dest])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    raw = b""

    def read_until(predicate, limit):
        nonlocal raw
        end = time.time() + limit
        while time.time() < end:
            if predicate(ANSI.sub("", raw.decode(errors="replace"))):
                return True
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    return False
                if not data:
                    return False
                raw += data
        return False

    for name, keys in answers:
        prompt = PROMPTS[name]
        seen = ANSI.sub("", raw.decode(errors="replace")).count(prompt)
        if not read_until(lambda text: text.count(prompt) > seen, 120):
            os.kill(pid, 9)
            fail(f"the question {name!r} ({prompt!r}) was not asked; the screen:\n{ANSI.sub('', raw.decode(errors='replace'))}")
        time.sleep(0.3)
        os.write(fd, keys.encode())
    read_until(lambda text: False, 0)  # drain
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        raw += data
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), ANSI.sub("", raw.decode(errors="replace")), os.path.join(dest, "demo")


def asked(screen):
    """The questions shown, by name, in the order they were first shown."""
    first = {name: screen.find(prompt) for name, prompt in PROMPTS.items() if prompt in screen}
    return sorted(first, key=first.get)


def check_fits():
    for name, prompt in PROMPTS.items():
        # "? 🤷   <question> ›" and "✔ 🤷   <question> · <answer>" take about 20 more columns.
        if len(prompt) + 20 > COLUMNS:
            fail(f"the question {name!r} does not fit on a {COLUMNS}-column line: {prompt!r}")


def check_readme():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", text, re.M)
    table = [(name, question.strip()) for name, question in rows if name in PROMPTS or question.strip().endswith("?")]
    expected = [(name, PROMPTS[name]) for name in ORDER + [n for n in PROMPTS if n not in ORDER]]
    if table != expected:
        fail(f"README.md's prompt table does not list the questions asked:\n  table:    {table}\n  expected: {expected}")


def main():
    if shutil.which("cargo-generate") is None:
        fail("cargo-generate is not on the PATH")
    check_fits()
    check_readme()

    if "chain" in ORDER:
        fail("`chain` is asked whatever the resolution: make it conditional on resolution == \"chain\"")
    status, screen, project = generate([(name, ENTER) for name in ORDER])
    if status != 0:
        fail(f"generation with the defaults failed:\n{screen}")
    if "chain" in asked(screen) or asked(screen) != ORDER:
        fail(f"with the defaults the questions were {asked(screen)}, expected {ORDER}")
    for expected in ("Generated demo: isolation=schema, resolution=header", "cargo run -- migrate",
                     "cargo run -- tenant create acme", "cargo run -- serve"):
        if expected not in screen:
            fail(f"the post hook's summary lacks {expected!r}:\n{screen}")
    shutil.rmtree(os.path.dirname(project))
    print("ok    the defaults: every question but `chain`, once each, and the next commands")

    chain_path = [("isolation", ENTER), ("resolution", DOWN * 4 + ENTER)] + [
        (name, ENTER) for name in ORDER[2:]]
    status, screen, project = generate(chain_path + [("chain", "subdomain,path" + ENTER)])
    if status != 0:
        fail(f"generation with resolution=chain failed:\n{screen}")
    if asked(screen) != ORDER + ["chain"] or screen.count(PROMPTS["chain"] + " [") != 1:
        fail(f"with resolution=chain the questions were {asked(screen)}, `chain` shown "
             f"{screen.count(PROMPTS['chain'] + ' [')} times:\n{screen}")
    resolvers = sorted(os.listdir(os.path.join(project, "src", "tenancy", "resolve")))
    if resolvers != ["chain.rs", "found.rs", "mod.rs", "path.rs", "settings.rs", "subdomain.rs"]:
        fail(f"resolution=chain chain=subdomain,path generated the resolvers {resolvers}")
    shutil.rmtree(os.path.dirname(project))
    print("ok    resolution=chain: `chain` asked once, the chosen resolvers generated")

    status, screen, project = generate(chain_path + [("chain", "jwt,jwt" + ENTER)])
    if status == 0 or "chain='jwt,jwt' names 'jwt' twice" not in screen:
        fail(f"a bad chain was not refused with the pre hook's message (exit {status}):\n{screen}")
    if os.path.exists(project) and os.listdir(project):
        fail(f"a refused generation left files in {project}")
    shutil.rmtree(os.path.dirname(project), ignore_errors=True)
    print("ok    a bad chain: the pre hook's message, no project")


main()
