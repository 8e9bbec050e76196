"""The command's last line of defence: storage failures end in one line and exit 2, other errors are not hidden."""

import argparse
import errno

import pytest

from hpcvision import cli


def _main_raising(monkeypatch, exc: BaseException) -> int:
    def parser():
        p = argparse.ArgumentParser()
        p.set_defaults(func=lambda _args: (_ for _ in ()).throw(exc), verbose=False)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    return cli.main([])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_storage_failure_is_one_line_and_exit_2(monkeypatch, capsys, code):
    import os

    assert _main_raising(monkeypatch, OSError(code, os.strerror(code), "/out/shard-0")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"hpcvision: error: /out/shard-0: {os.strerror(code)}"


def test_tensorflow_storage_errors_are_recognised_by_their_text(monkeypatch, capsys):
    tf_error = type("PermissionDeniedError", (Exception,), {"__module__": "tensorflow.python.framework.errors_impl"})
    exc = tf_error("{{function_node __wrapped__SaveV2}} /ckpt/checkpoint_temp; Read-only file system [Op:SaveV2]\n\tcontext")
    assert _main_raising(monkeypatch, exc) == 2
    assert capsys.readouterr().err.strip() == "hpcvision: error: /ckpt/checkpoint_temp; Read-only file system"


def test_other_errors_keep_their_traceback(monkeypatch):
    with pytest.raises(FileNotFoundError):
        _main_raising(monkeypatch, FileNotFoundError(errno.ENOENT, "No such file or directory", "x"))
    with pytest.raises(ZeroDivisionError):
        _main_raising(monkeypatch, ZeroDivisionError("bug"))
