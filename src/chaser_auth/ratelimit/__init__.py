"""Rate limits: the moving-window limiter (`limiter`) and, beside it, the per-address mail
budget the domain asks for (`address`, the adapters of `domain.outbox.AddressLimit`)."""
