"""The experiment workspace: a git repository of the regime's science package.

Every code edit is a commit; every node records the commit it trained on.
Commits are made with git plumbing (hash-object, a temporary index,
write-tree, commit-tree), so nothing checked out ever changes and two slots can
edit and train different lineages at once. Each training gets its own copy of
the code as a detached git worktree (`checkout`).

Layout inside the repository: the package at its import path (``regimes.metabolism``
-> ``regimes/metabolism/...``) plus an empty ``__init__.py`` in every parent
package (``regimes/__init__.py``), so putting a checkout first on PYTHONPATH
makes the training import the workspace's code; ``regimes/runtime.py`` (the
entries' shared runtime, docs/contracts.md §2b) is copied in for every regime,
since a confined training can import nothing outside its checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import git

from regimes.base import Regime

AUTHOR_NAME = "gnn-agent"
AUTHOR_EMAIL = "gnn-agent@localhost"
ROOT_TAG = "root"
#: keep every commit we create reachable, so no gc ever drops an edit not yet tagged as a node
KEEP_REF_PREFIX = "refs/gnn-agent/keep/"
#: directory names never copied into the workspace (caches, generated data)
SKIP_DIRS = {"__pycache__", "data", ".git", ".pytest_cache", ".mypy_cache", "runs", "outputs"}
#: file suffixes never copied (bytecode, datasets, checkpoints)
SKIP_SUFFIXES = {".pyc", ".pyo", ".pt", ".pth", ".ckpt", ".npz", ".npy", ".h5", ".pkl", ".png"}


class WorkspaceError(RuntimeError):
    """A workspace operation failed; the message names the commit, path or git error."""


def edit_message(iteration: int, slot: int, change: str, hypothesis: str) -> str:
    """The commit message of a code edit: ``[iter N slot S] <change> — hypothesis: <why>``."""
    change = " ".join(change.split())
    hypothesis = " ".join(hypothesis.split())
    if not change:
        raise ValueError("edit message: the change description is empty")
    if not hypothesis:
        raise ValueError("edit message: the hypothesis is empty")
    return f"[iter {iteration} slot {slot}] {change} — hypothesis: {hypothesis}"


def _package_relpath(package: str) -> Path:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", package):
        raise WorkspaceError(f"regime package {package!r} is not a dotted Python module name")
    return Path(*package.split("."))


def _copy_package(src: Path, dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        out = set()
        for n in names:
            p = Path(directory) / n
            if p.is_dir() and n in SKIP_DIRS:
                out.add(n)
            elif p.is_file() and p.suffix in SKIP_SUFFIXES:
                out.add(n)
            elif p.is_symlink():
                out.add(n)  # a symlink could point out of the workspace
        return out

    shutil.copytree(src, dest, ignore=ignore)


class Workspace:
    """A git repository of the editable science code (docs/contracts.md §4).

    All methods are safe to call from several threads: one lock serialises the
    git calls of this object (several Workspace objects on one repository in
    one process share the lock through `_LOCKS`).
    """

    _LOCKS: dict[str, threading.RLock] = {}
    _LOCKS_GUARD = threading.Lock()

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        try:
            self.repo = git.Repo(self.root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
            raise WorkspaceError(f"{self.root} is not a workspace (no git repository): {e}") from None
        with self._LOCKS_GUARD:
            self._lock = self._LOCKS.setdefault(str(self.root), threading.RLock())
        rc = self._git("rev-parse", "--verify", "-q", f"refs/tags/{ROOT_TAG}^{{commit}}", check=False)
        if not rc:
            raise WorkspaceError(f"{self.root} has no '{ROOT_TAG}' tag; not created by Workspace.create")
        self.root_commit: str = rc
        # a run that crashed may have left worktrees registered whose directories are gone
        self.prune()

    # ----- creation -----

    @classmethod
    def create(cls, root: Path, regime: Regime) -> "Workspace":
        """Make a git repo at `root` holding a copy of `regime.package` (no caches, no data).

        The first commit is tagged ``root``. `root` must not exist or be empty.
        """
        root = Path(root).resolve()
        if root.exists() and any(root.iterdir()):
            raise WorkspaceError(f"workspace directory {root} exists and is not empty")
        src = Path(regime.package_dir).resolve()
        if not (src / "__init__.py").is_file():
            raise WorkspaceError(f"regime {regime.name}: package_dir {src} is not a Python package (no __init__.py)")
        rel = _package_relpath(regime.package)
        root.mkdir(parents=True, exist_ok=True)
        _copy_package(src, root / rel)
        # parent packages stay import-free: the copy must not import the installed project
        for i in range(1, len(rel.parts)):
            (root / Path(*rel.parts[:i]) / "__init__.py").write_text("")
        # every training entry may use regimes.runtime (exit codes, failure.json, predictions), and
        # a confined training can import nothing outside its checkout: ship the module with the code
        import regimes.runtime as runtime

        (root / "regimes").mkdir(exist_ok=True)
        if not (root / "regimes" / "__init__.py").exists():
            (root / "regimes" / "__init__.py").write_text("")
        if not (root / "regimes" / "runtime.py").exists():
            shutil.copyfile(runtime.__file__, root / "regimes" / "runtime.py")
        repo = git.Repo.init(root)
        with repo.config_writer() as cw:
            cw.set_value("user", "name", AUTHOR_NAME)
            cw.set_value("user", "email", AUTHOR_EMAIL)
            cw.set_value("gc", "auto", "0")  # never prune objects behind our back
            cw.set_value("core", "autocrlf", "false")
        (root / ".gitignore").write_text("__pycache__/\n*.pyc\n")
        repo.git.add("-A", "--", ".")
        env = cls._author_env()
        tree = repo.git.execute(["git", "write-tree"], env=env)
        commit = repo.git.execute(
            ["git", "commit-tree", tree, "-m", f"root: copy of {regime.package} for regime {regime.name}"], env=env)
        repo.git.execute(["git", "update-ref", "HEAD", commit], env=env)
        repo.git.execute(["git", "update-ref", f"refs/tags/{ROOT_TAG}", commit], env=env)
        return cls(root)

    @classmethod
    def open(cls, root: Path) -> "Workspace":
        """Open an existing workspace (e.g. on resume); prunes stale worktrees."""
        return cls(root)

    # ----- git helpers -----

    @staticmethod
    def _author_env() -> dict[str, str]:
        return {"GIT_AUTHOR_NAME": AUTHOR_NAME, "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
                "GIT_COMMITTER_NAME": AUTHOR_NAME, "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL}

    def _git(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
             check: bool = True) -> str:
        """Run one git command in the repository; returns stripped stdout.

        With check=False a failure returns "" instead of raising.
        """
        full_env = dict(os.environ)
        full_env.update(self._author_env())
        # a hook or user config must not redirect our plumbing to another index
        full_env.pop("GIT_INDEX_FILE", None)
        full_env.pop("GIT_DIR", None)
        full_env.pop("GIT_WORK_TREE", None)
        if env:
            full_env.update(env)
        p = subprocess.run(["git", "-C", str(self.root), *args], input=input, env=full_env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            if not check:
                return ""
            err = p.stderr.decode(errors="replace").strip().splitlines()
            raise WorkspaceError(f"git {args[0]} failed: {err[-1] if err else 'exit ' + str(p.returncode)}")
        return p.stdout.decode(errors="replace").strip()

    def resolve(self, rev: str) -> str:
        """The full sha of a commit-ish (sha, tag, 'root', 'node-3'), or WorkspaceError."""
        sha = self._git("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False)
        if not sha:
            raise WorkspaceError(f"unknown commit {rev!r} in workspace {self.root}")
        return sha

    @staticmethod
    def _norm_path(path: str) -> str:
        p = Path(path)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise WorkspaceError(f"path {path!r} must be relative to the workspace, without '..'")
        return p.as_posix()

    def _file_entry(self, commit: str, path: str) -> tuple[str, str] | None:
        """(mode, blob sha) of `path` at `commit`, or None when absent."""
        out = self._git("ls-tree", commit, "--", path)
        if not out:
            return None
        meta, _name = out.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind != "blob":
            raise WorkspaceError(f"{path} at {commit[:10]} is a {kind}, not a file")
        return mode, sha

    def _commit_with(self, base: str, path: str, blob: tuple[str, str] | None, message: str) -> str:
        """Commit `base`'s tree with `path` set to blob (mode, sha) or removed (None)."""
        fd, index = tempfile.mkstemp(prefix="gnn-agent-index-", dir=self.repo.git_dir)
        os.close(fd)
        os.unlink(index)  # git wants to create the index itself
        env = {"GIT_INDEX_FILE": index}
        try:
            self._git("read-tree", base, env=env)
            if blob is None:
                self._git("update-index", "--force-remove", "--", path, env=env)
            else:
                self._git("update-index", "--add", "--cacheinfo", f"{blob[0]},{blob[1]},{path}", env=env)
            tree = self._git("write-tree", env=env)
        finally:
            if os.path.exists(index):
                os.unlink(index)
        if tree == self._git("rev-parse", f"{base}^{{tree}}"):
            raise WorkspaceError(f"{path}: the edit changes nothing relative to {base[:10]}")
        commit = self._git("commit-tree", tree, "-p", base, input=message.encode())
        self._git("update-ref", KEEP_REF_PREFIX + commit, commit)
        return commit

    # ----- reading -----

    def read(self, commit: str, path: str) -> str:
        """The text of `path` at `commit`."""
        with self._lock:
            sha = self.resolve(commit)
            path = self._norm_path(path)
            entry = self._file_entry(sha, path)
            if entry is None:
                raise WorkspaceError(f"{path} does not exist at commit {sha[:10]}")
            return self._git_bytes("cat-file", "blob", entry[1]).decode()

    def _git_bytes(self, *args: str) -> bytes:
        p = subprocess.run(["git", "-C", str(self.root), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise WorkspaceError(f"git {args[0]} failed: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout

    def exists(self, commit: str, path: str) -> bool:
        """True when `path` is a file at `commit`."""
        with self._lock:
            return self._file_entry(self.resolve(commit), self._norm_path(path)) is not None

    def files(self, commit: str) -> list[str]:
        """All file paths at `commit`."""
        with self._lock:
            out = self._git("ls-tree", "-r", "--name-only", self.resolve(commit))
            return out.splitlines()

    def diff(self, a: str, b: str, path: str | None = None) -> str:
        """Unified diff from commit `a` to commit `b` (optionally of one path)."""
        with self._lock:
            args = ["diff", "--no-color", self.resolve(a), self.resolve(b)]
            if path is not None:
                args += ["--", self._norm_path(path)]
            return self._git(*args)

    def log(self, commit: str, n: int = 20) -> list[dict]:
        """The last `n` commits reachable from `commit`, newest first:
        ``{"commit", "parent", "author", "date", "message"}``."""
        with self._lock:
            sha = self.resolve(commit)
            out = []
            for c in self.repo.iter_commits(sha, max_count=n):
                out.append({"commit": c.hexsha, "parent": c.parents[0].hexsha if c.parents else None,
                            "author": c.author.name, "date": c.committed_datetime.isoformat(),
                            "message": c.message.strip()})
            return out

    # ----- writing (never touches a checked-out tree) -----

    def commit_edit(self, base: str, path: str, new_text: str, message: str) -> str:
        """A new commit whose parent is `base`, with `path` holding `new_text`.

        Nothing checked out changes (plumbing on a temporary index). The caller
        runs the guard first (`sandbox.guard`); see also `checked_edit`.
        """
        if not message.strip():
            raise WorkspaceError("commit message is empty")
        with self._lock:
            sha = self.resolve(base)
            path = self._norm_path(path)
            entry = self._file_entry(sha, path)
            if entry is not None and entry[0] == "120000":
                raise WorkspaceError(f"{path} is a symlink at {sha[:10]}; edits may not go through symlinks")
            mode = entry[0] if entry else "100644"
            blob = self._git("hash-object", "-w", "--stdin", input=new_text.encode())
            return self._commit_with(sha, path, (mode, blob), message)

    def revert_file(self, base: str, to_commit: str, path: str, message: str) -> str:
        """A new commit on top of `base` where `path` is as in `to_commit` (removed if absent there)."""
        if not message.strip():
            raise WorkspaceError("commit message is empty")
        with self._lock:
            sha = self.resolve(base)
            target = self.resolve(to_commit)
            path = self._norm_path(path)
            return self._commit_with(sha, path, self._file_entry(target, path), message)

    def checked_edit(self, regime: Regime, base: str, path: str, new_text: str,
                     message: str) -> tuple[str | None, list[str]]:
        """Guard an edit and commit it only when accepted.

        Returns (commit, []) on success or (None, errors) when the guard
        rejects it; nothing is written on rejection.
        """
        from sandbox.guard import check_code_edit, check_path

        err = check_path(regime, self.root, path)
        if err:
            return None, [err]
        with self._lock:
            sha = self.resolve(base)
            norm = self._norm_path(path)
            if self._file_entry(sha, norm) is None:
                return None, [f"{norm}: no such file at commit {sha[:10]}"]
            old = self.read(sha, norm)
            errors = check_code_edit(regime, norm, old, new_text)
            if errors:
                return None, errors
            return self.commit_edit(sha, norm, new_text, message), []

    def tag_node(self, node_id: int, commit: str) -> None:
        """Tag `commit` as ``node-<id>`` (moved if it exists, e.g. a node re-run on resume)."""
        with self._lock:
            self._git("update-ref", f"refs/tags/node-{int(node_id)}", self.resolve(commit))

    def node_commit(self, node_id: int) -> str | None:
        """The commit tagged ``node-<id>``, or None."""
        with self._lock:
            return self._git("rev-parse", "--verify", "-q", f"refs/tags/node-{int(node_id)}^{{commit}}",
                             check=False) or None

    def refs(self) -> dict[str, str]:
        """Every ref (incl. HEAD) -> sha; a snapshot to prove an operation wrote nothing."""
        with self._lock:
            out = self._git("show-ref", "--head", check=False)
            return dict(reversed(line.split(" ", 1)) for line in out.splitlines())

    # ----- checkouts for trainings -----

    def prune(self) -> None:
        """Forget worktrees whose directories are gone (after a crash)."""
        with self._lock:
            self._git("worktree", "prune", check=False)

    def checkout(self, commit: str, dest: Path) -> Path:
        """A detached worktree of `commit` at `dest`, for one training.

        A leftover directory or stale worktree at `dest` (crashed run, re-run
        of a slot) is removed first. Safe from several threads.
        """
        dest = Path(dest).resolve()
        with self._lock:
            sha = self.resolve(commit)
            self._remove_locked(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._git("worktree", "add", "--detach", "-f", str(dest), sha)
            return dest

    def remove_checkout(self, dest: Path) -> None:
        """Remove a checkout made by `checkout` (no error if it is gone)."""
        with self._lock:
            self._remove_locked(Path(dest).resolve())

    def _remove_locked(self, dest: Path) -> None:
        if dest == self.root or dest in self.root.parents or self.root / ".git" in (dest, *dest.parents):
            raise WorkspaceError(f"refusing to remove {dest}: it holds the workspace repository")
        if dest.exists():
            if not dest.is_dir() or (any(dest.iterdir()) and not (dest / ".git").is_file()):
                raise WorkspaceError(f"refusing to replace {dest}: it exists and is not a checkout (no .git file)")
            self._git("worktree", "remove", "--force", "--force", str(dest), check=False)
            if dest.exists():
                shutil.rmtree(dest)
        self._git("worktree", "prune", check=False)
