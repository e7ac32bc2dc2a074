"""Test your functions with production semantics: ``fnd_client(project_dir)``.

The public name of :mod:`fnd.author.testing`; see it for the details.
"""

from fnd.author.testing import FndClient, LaunchError, Reply, fnd_client

__all__ = ["FndClient", "LaunchError", "Reply", "fnd_client"]
