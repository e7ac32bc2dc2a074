"""The pool of workers: dispatch and queue (pool), worker processes from fork to reaping
(supervisor), the sizing policy (sizing), one worker's handle (worker_proc), slots, deaths,
frame checks, output caps, the spawner interface and the zygote client.
"""
