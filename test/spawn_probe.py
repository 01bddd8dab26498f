"""Target for a spawned process: reports which Encoder ESPnet's transducer task would build.

It imports no espnet_rwkv on purpose: only the launcher can have registered the plugin.
"""


def report_encoder(queue):
    import espnet2.tasks.asr_transducer as task

    queue.put(task.Encoder.__module__)
