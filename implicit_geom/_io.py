"""Small file helpers shared by the writers that build files under temporary names."""

import os


def usual_mode(path, directory=False):
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would have (umask applied).

    ``tempfile.mkstemp``/``mkdtemp`` create 0600 files and 0700 folders; a
    figure or model folder renamed into place from one would stay private.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)
