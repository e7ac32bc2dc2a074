"""The operator's tools: the control socket client and the status view (`fnd status`,
`fnd reload`, `fnd metrics`). They run in the operator's shell, never in the daemon.
"""
