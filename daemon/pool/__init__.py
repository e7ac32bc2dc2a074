"""The pool of workers: dispatch and queue, one worker's handle, slots, deaths, frame
checks, output caps, the spawner interface and the zygote client.
"""
