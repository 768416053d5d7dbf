"""What the server hands each container of an admitted app: its ``ContainerPlan`` (spec,
workspace, settings, data, account, GPU meter) and, in a gang, torch.distributed's rendezvous."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence

from dlapp.arrays import member_env
from dlapp.contract import ContainerPlan, MeterPlan
from dlapp.data.locations import DataConfig
from dlapp.server.context import Context
from dlapp.server.scheduling.gpus import Grant
from dlapp.spec import AppSpec
from dlapp.store.models import App
from dlapp.unix_accounts import AccountPlan


def rendezvous(app_id: str, attempt: int, node_names: list[str]) -> list[dict[str, str]]:
    """torch.distributed's environment for each container of a gang: one process per
    container; container 0's node is the master; the port is derived from the app and attempt
    (29500-30499) so every container knows it before any starts."""
    port = 29500 + zlib.crc32(f"{app_id}:{attempt}".encode()) % 1000
    node_order = list(dict.fromkeys(node_names))
    seen: dict[str, int] = {}
    out = []
    for rank, node in enumerate(node_names):
        out.append(
            {
                "MASTER_ADDR": node_names[0],
                "MASTER_PORT": str(port),
                "WORLD_SIZE": str(len(node_names)),
                "RANK": str(rank),
                "LOCAL_RANK": str(seen.get(node, 0)),
                "NODE_RANK": str(node_order.index(node)),
            }
        )
        seen[node] = seen.get(node, 0) + 1
    return out


def array_env(app: App) -> dict[str, str]:
    """An array's member's own ``DLAPP_ARRAY_*`` (and sweep) variables
    (``arrays.member_env``); none for any other app."""
    if app.array_id is None or app.array is None:
        return {}
    values = json.loads(app.array_values) if app.array_values else {}
    return member_env(app.array_id, app.array_index or 0, app.array.size, values)


def container_plans(
    ctx: Context,
    app: App,
    spec: AppSpec,
    node_names: list[str],
    node_ids: Sequence[str],
    data_config: DataConfig,
    account: AccountPlan | None,
    grants: Sequence[Grant] = (),
) -> list[ContainerPlan]:
    """One plan per container of ``app``'s new attempt, the i-th on ``node_ids[i]`` with the
    GPUs of ``grants[i]``."""
    s = ctx.settings
    own = array_env(app)
    env = rendezvous(app.id, app.attempt, node_names)
    # the same for every container of the app: worked out once (data_config resolves paths)
    spec_dict, data = spec.to_dict(), data_config.to_dict()
    account_dict = account.to_dict() if account else {}
    container = s.container_policy.model_dump(mode="json")
    meter = MeterPlan(s.gpu_sampler, s.gpu_sample_interval_s, s.gpu_idle_below).to_dict()
    return [
        ContainerPlan(
            app_id=app.id,
            attempt=app.attempt,
            index=i,
            num_containers=app.num_containers,
            spec=spec_dict,
            workspace_tarball=app.workspace,
            artifact_root=str(s.artifacts),
            work_root=str(s.work),
            checkpoint_root=str(s.checkpoints),
            max_files=s.workspace_max_files,
            max_bytes=s.workspace_max_mb * 1024 * 1024,
            rendezvous=env[i],
            array_env=own,
            node_id=node_ids[i],
            data=data,
            container=container,
            meter=meter,
            account=account_dict,
            gpu_ids=grants[i].gpu_ids if i < len(grants) else (),
            gpu_share=grants[i].share if i < len(grants) else 0.0,
            gpu_memory_mb=grants[i].memory_mb if i < len(grants) else 0,
        )
        for i in range(app.num_containers)
    ]
