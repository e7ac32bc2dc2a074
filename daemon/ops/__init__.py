"""What operators and supervisors talk to: the control socket, metrics, systemd,
PID 1 duty, socket claims and the project watcher.
"""
