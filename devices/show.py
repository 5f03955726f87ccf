"""`edgepilot devices`: the profiles as a table and this host described."""

from __future__ import annotations

from edgepilot.devices.host import HostInfo
from edgepilot.devices.profiles import PROFILES

__all__ = ["print_devices", "devices_json"]


def devices_json(host: HostInfo) -> dict:
    return {"host": host.to_dict(), "profiles": [p.to_dict() for p in PROFILES]}


def print_devices(host: HostInfo, console=None) -> None:
    from rich.table import Table
    from rich.text import Text

    from edgepilot.terminal import console as terminal_console

    console = console or terminal_console(piped_width=160)
    table = Table(title="device profiles (edgepilot export/deploy --device NAME)")
    for column in ("device", "hardware", "format", "precision", "runs on", "why"):
        table.add_column(column, overflow="fold")
    for p in PROFILES:
        fmt = p.format if p.available else f"{p.format} (not built yet)"
        name = Text(f"{p.name} ◀ this host", style="bold") if p.name == host.profile else p.name
        table.add_row(name, p.title, fmt, p.precision, p.accelerator, p.why)
    console.print(table)
    runtimes = ", ".join(f"{name} {version}" for name, version in host.runtimes.items()
                         if not version.startswith("not installed")) or "none"
    rows = (
        ("OS", f"{host.os} ({host.kernel})" if host.kernel else host.os),
        ("architecture", host.arch),
        ("CPU", f"{host.cpu}, {host.cores} cores"),
        ("CPU features", ", ".join(host.cpu_features) or "none of note"),
        ("board", host.board or "-"),
        ("Jetson Linux", host.l4t or "-"),
        ("memory", f"{host.memory_mb:,} MB ({host.memory_available_mb:,} MB available)"),
        ("runtimes", runtimes),
        ("ONNX providers", ", ".join(host.providers) or "-"),
        ("LiteRT delegates", ", ".join(host.delegates) or "-"),
        ("accelerators", ", ".join(host.accelerators) or "none found"),
        ("cameras", ", ".join(host.cameras) or "none found"),
        ("profile", f"{host.profile} ({host.profile_reason})" if host.profile
         else host.profile_reason),
    )
    described = Table(title="this host", show_header=False)
    described.add_column(style="bold")
    described.add_column(overflow="fold")
    for key, value in rows:
        described.add_row(key, value)
    console.print(described)
