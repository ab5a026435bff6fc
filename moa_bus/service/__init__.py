"""The moa service on NATS: the box's desired state and every change to it, applied in order.

- `transport`: MoaService, the NATS side: request/reply endpoints through one subscription,
  JetStream events, acks; `micro`: the NATS micro protocol (discovery, stats, error headers).
- `applier`: one queue: decode, judge, apply, commit, ack, in arrival order.
- `desired`: the desired state, its one owner, durable (StateStore), generations.
- `status`, `telemetry`: what status, telemetry.links and telemetry.drops report.
- `subjects`: subject names and headers; `connection`: connecting to NATS;
  `embedded_nats`: the nats-server `moa serve` starts without a URL.
- `settings`, `box_checks`, `box`, `serve_loop`: `moa serve`'s settings, the checks of the
  machine, the box opened and converged at start, and the service's life until a signal.
"""
