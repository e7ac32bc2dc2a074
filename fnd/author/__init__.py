"""The author's tools: `fnd init` (scaffold), `fnd invoke`, and the pytest helper behind
``fnd.testing``. Each starts or talks to a real `fnd serve`; none runs inside the daemon.
"""
