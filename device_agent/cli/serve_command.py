"""`device-agent serve`: the API process (Python 3.8+); it spawns the torch worker."""


def run_serve(args) -> int:
    from device_agent.api.app import create_app
    from device_agent.api.server import serve
    from device_agent.api.settings import Settings

    flags = {"data_dir": args.data_dir, "host": args.host, "port": args.port,
             "token": args.token, "worker_python": args.worker_python,
             "worker_device": args.worker_device, "worker_weights": args.worker_weights,
             "memory_limit_mb": args.memory_limit_mb, "threads": args.threads,
             "predict_backend": args.predict_backend, "demo": args.demo}
    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    app = create_app(settings)
    print("device-agent on http://%s:%d (token in %s/token unless given)"
          % (settings.host, settings.port, settings.data_dir), flush=True)
    serve(app, settings)  # connection, header, time limits: device_agent/api/server.py
    return 0
