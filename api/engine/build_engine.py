"""Runs builds as tasks in the API process or in a build worker (`nexus-ai worker`).

The store is the single source of truth for every build, so that control actions, crashes and
several API instances all go through one mechanism:
- an engine *claims* a build (queued, resumed, or left behind under an expired lease) and holds
  a lease it renews; at most `MAX_CONCURRENT_BUILDS` claims per engine, oldest first;
- every progress write is conditional on the build still being ours and held (running or
  `pausing`), so a `stop` or a delete is noticed at the next write even when sent to another
  instance;
- `pause` marks a running build `pausing`; it becomes `paused` at the next stage or sub-stage
  boundary, where its engine releases the claim. `resume` makes it claimable again and it
  continues from the first unfinished step, which is also how a build left by a dead process
  is resumed.

Control actions are this module's operations (`BuildEngine.pause`, `resume`, `stop`, `restart`,
`create`, `delete_project`): nothing else writes a build's status, stages, owner or lease.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from api.core import ids
from api.core.clock import iso_timestamp, utc_now
from api.core.context import bind, request_id_var
from api.core.store_errors import StoreError
from api.core.records import (
    Agent, Artifact, Build, BuildError, BuildLogLine, ModelUsage, Project, Stage, StageError, SubStage)
from api.database.store import ACTIVE_BUILD_STATUSES, HELD_BUILD_STATUSES, Store
from api.engine.stage_work import StageFailed, StageWorker, build_usage
from api.prompts import PROMPT_VERSION
from api.engine.stages import initial_stages, progress
from api.observability import metrics

logger = logging.getLogger("api.engine.build_engine")

# A build whose process died this many times is failed with `interrupted` instead of
# being taken over again: it is probably what kills the process.
MAX_RECOVERIES = 3
# How often the engine looks for claimable builds when nobody wakes it.
SCHEDULE_POLL_SECONDS = 1.0
# How often an engine running builds reads which of them it still holds: a stop or delete sent
# through another process (the API, when builds run in `nexus-ai worker`s) ends the build's
# model call within this, where lease renewals (every third of BUILD_LEASE_SECONDS) would take
# seconds. One indexed read (a Query on DynamoDB), and only while builds run here. A quarter
# of a second leaves the rest of the second to the cancellation itself: at 0.5 s a stop through
# the API on a loaded CI machine once took longer than a second to close the model request.
CONTROL_POLL_SECONDS = 0.25


class BuildAbandoned(Exception):
    """The build is no longer ours to run: stopped, deleted, paused at a boundary, or taken over."""


def _after(seconds: float) -> str:
    return iso_timestamp(time.time() + seconds)


def _seconds_between(start: str, end: str) -> float:
    parse = lambda text: datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def new_build(tenant_id: str, project_id: str) -> Build:
    now = utc_now()
    return Build(tenant_id=tenant_id, build_id=ids.build_id(), project_id=project_id,
                 status="queued", progress=0.0, current_stage=None, stages=initial_stages(),
                 context={}, request_id=request_id_var.get(), created_at=now, updated_at=now)


class BuildRun:
    """One claimed build being executed by this engine."""

    def __init__(self, engine: "BuildEngine", build: Build, project: Project) -> None:
        self.engine = engine
        self.store = engine.store
        self.build = build
        self.project = project
        self.build_id = build.build_id
        self.tenant_id = build.tenant_id
        self.stages = build.stages
        self.context = build.context
        self._lines: list[BuildLogLine] = []  # stage log lines not yet saved

    async def _write(self, expect_status: tuple[str, ...], logs: Sequence[BuildLogLine],
                     artifacts: Sequence[Artifact], changes: dict[str, Any]) -> bool:
        """Progress, with `logs` and `artifacts`, in one store write conditional on the build
        still being ours: one store write per step boundary (docs/PERFORMANCE.md, item 6)."""
        current = next((s.name for s in self.stages if s.status == "running"), None)
        return await self.store.update_build(
            tenant_id=self.tenant_id, build_id=self.build_id,
            changes={"stages": self.stages, "context": self.context, "progress": progress(self.stages),
                     "usage": build_usage(self.stages), "current_stage": current,
                     "updated_at": utc_now(), **changes},
            expect_status=expect_status, expect_owner=self.engine.instance_id,
            logs=logs, artifacts=artifacts)

    async def _save(self, artifacts: Sequence[Artifact] = (), **changes: Any) -> None:
        """Progress, and the stage log lines logged since the last save."""
        if not await self._write(HELD_BUILD_STATUSES, self._lines, artifacts, changes):
            raise BuildAbandoned("build was stopped, deleted or taken over")
        self._lines = []

    async def _start(self, stage: str, step: Stage | SubStage) -> None:
        """A stage or sub-stage boundary, where pause, stop and delete take effect: the step
        is marked running by a write that requires the build to be running and ours."""
        step.status = "running"
        step.started_at = step.started_at or utc_now()
        message = f"{step.name} started"
        while not await self._write(("running",), [self._line(stage, message)], (), {}):
            await self._pause_or_abandon(stage, step)
        logger.info(message, extra={"stage": stage})

    async def _pause_or_abandon(self, stage: str, step: Stage | SubStage) -> None:
        """After a refused start: settle a pausing build as paused and hand it back to the
        store, unowned; return if it was resumed meanwhile (the caller tries again)."""
        build = await self.store.get_build(tenant_id=self.tenant_id, build_id=self.build_id)
        if build is None or build.status not in HELD_BUILD_STATUSES or build.owner != self.engine.instance_id:
            raise BuildAbandoned("build was stopped, deleted or taken over")
        if build.status in ("pausing", "paused"):
            message = f"Build paused before {step.name}"
            self.engine.releasing.add(self.build_id)
            if await self.store.update_build(
                    tenant_id=self.tenant_id, build_id=self.build_id, changes={"status": "paused", "owner": None,
                                                     "lease_until": None, "updated_at": utc_now()},
                    expect_status=("pausing", "paused"), expect_owner=self.engine.instance_id,
                    logs=[self._line(stage, message)]):
                logger.info(message, extra={"stage": stage})
                raise BuildAbandoned("paused")
            self.engine.releasing.discard(self.build_id)

    @staticmethod
    def _line(stage: str, message: str, level: int = logging.INFO) -> BuildLogLine:
        return BuildLogLine(stage=stage, timestamp=utc_now(), level=logging.getLevelName(level),
                            message=message)

    def _log(self, stage: str, *messages: str, level: int = logging.INFO) -> None:
        """Stage log lines: to the process log now (with the build's context), to the stage's
        stored log with the next save."""
        for message in messages:
            logger.log(level, message, extra={"stage": stage})
            self._lines.append(self._line(stage, message, level))

    async def _work(self, stage: str, step: Stage | SubStage, *, last: bool = False) -> None:
        """Run one stage or sub-stage (`step`) as model work and save its output; the last
        step also registers the agent and finishes the build. The step keeps its model usage,
        also when it fails (the tokens were spent)."""
        async with self.engine.turn:
            await self._start(stage, step)
        started = time.perf_counter()
        usage = ModelUsage(model=self.engine.worker.model, prompt_version=PROMPT_VERSION)
        try:
            output = await self.engine.worker.run(
                stage=step.name, requirement=self.project.requirement, context=self.context,
                usage=usage)
        finally:
            step.model_usage = usage
        seconds = time.perf_counter() - started
        async with self.engine.turn:
            created_at = utc_now()
            self.context.update(output.context)
            metrics.record_stage(stage=step.name, seconds=seconds)
            step.status = "completed"
            step.completed_at = utc_now()
            step.duration_seconds = round(seconds, 6)
            self._log(stage, *output.logs,
                      f"{step.name} completed in {seconds:.3f}s ({usage.calls} model calls, "
                      f"{usage.input_tokens} input and {usage.output_tokens} output tokens"
                      f"{', estimated' if usage.tokens_estimated else ''})")
            artifacts = [Artifact(tenant_id=self.tenant_id, project_id=self.project.project_id,
                                  build_id=self.build_id, path=path, stage=stage, content=content,
                                  size=len(content.encode()), created_at=created_at)
                         for path, content in output.artifacts.items()]
            if last:
                # Progress reaches 100 in the same write that marks the build succeeded.
                await self._register_agent()
                await self._finish("succeeded", artifacts=artifacts)
            else:
                await self._save(artifacts)

    async def _register_agent(self) -> None:
        design = self.context["design"]
        now = utc_now()
        agent_id = f"{self.project.project_id}:{design['agent_name']}"
        registered = await self.store.put_agent(
            tenant_id=self.tenant_id, expect_owner=self.engine.instance_id, agent=Agent(
                tenant_id=self.tenant_id, agent_id=agent_id, project_id=self.project.project_id,
                agent_name=design["agent_name"], description=design["description"],
                category=design["category"], capabilities=design["capabilities"],
                tools=design["tools"], system_prompt=self.context["system_prompt"],
                status="running", build_id=self.build_id, created_at=now, updated_at=now))
        if not registered:
            raise BuildAbandoned("build was stopped, deleted or taken over")
        self._log("agent_deployer", f"Registered agent {agent_id}")

    async def execute(self) -> None:
        for stage in self.stages:
            if stage.status == "completed":
                continue
            if not stage.sub_stages:
                await self._work(stage.name, stage, last=stage is self.stages[-1])
                continue
            stage.status = "running"
            stage.started_at = stage.started_at or utc_now()
            for sub in stage.sub_stages:
                if sub.status != "completed":
                    await self._work(stage.name, sub)
            stage.status = "completed"
            stage.completed_at = utc_now()
            stage.duration_seconds = round(_seconds_between(stage.started_at, stage.completed_at), 6)
            metrics.record_stage(stage=stage.name, seconds=stage.duration_seconds)
            async with self.engine.turn:
                await self._save()

    async def _finish(self, status: str, error: BuildError | None = None,
                      artifacts: Sequence[Artifact] = ()) -> None:
        finished_at = utc_now()
        duration = _seconds_between(self.build.started_at, finished_at)
        self.engine.releasing.add(self.build_id)
        await self._save(artifacts, status=status, finished_at=finished_at, duration_seconds=duration,
                         error=error, owner=None, lease_until=None)
        metrics.record_build_finished(status=status, duration_seconds=duration)
        logger.info(f"Build {status}", extra={"duration_seconds": round(duration, 6),
                                              "progress": progress(self.stages)})

    async def fail(self, code: str, message: str) -> None:
        running = next((s for s in self.stages if s.status == "running"), None)
        stage_name = running.name if running else None
        if running is not None:
            running.status = "failed"
            running.error = StageError(code=code, message=message)
            for sub in running.sub_stages:
                if sub.status == "running":
                    sub.status = "failed"
            self._log(running.name, f"{running.name} failed: {message}", level=logging.ERROR)
        await self._finish("failed", BuildError(stage=stage_name, code=code, message=message))


class BuildEngine:
    def __init__(self, *, store: Store, worker: StageWorker, max_concurrent_builds: int,
                 lease_seconds: float) -> None:
        self.store = store
        self.worker = worker
        self.max_concurrent_builds = max_concurrent_builds
        self.lease_seconds = lease_seconds
        # A fresh id per start: a restarted process must not mistake a dead predecessor's
        # claims for its own.
        self.instance_id = f"engine_{uuid.uuid4().hex[:12]}"
        self.accepting = False
        # Each build run here, by id: its tenant (shutdown hands it back by its key) and task.
        self._runs: dict[str, tuple[str, asyncio.Task[None]]] = {}
        # Runs writing their own release (finish, pause): the builds no longer read as held,
        # and that must not cancel the run before it has counted and logged its end.
        self.releasing: set[str] = set()
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        # One build at a time does its bookkeeping (store writes and the work around them on
        # the event loop); stages' model calls run concurrently. Without it, builds whose
        # stages take no time crowd API requests out of the loop (docs/PERFORMANCE.md, item 6).
        self.turn = asyncio.Lock()

    async def start(self, *, run_builds: bool = True) -> None:
        """Accept new builds; with `run_builds` also claim and run them (without it, another
        process sharing the store runs them: RUN_BUILDS=false beside `nexus-ai worker`)."""
        self.accepting = True
        if not run_builds:
            return
        self._loops = [asyncio.create_task(self._schedule(), name="build-scheduler"),
                       asyncio.create_task(self._renew(), name="build-leases"),
                       asyncio.create_task(self._watch(), name="build-control-watch")]

    def _wake_up(self) -> None:
        """Look for claimable builds now (a build was queued, resumed or handed back)."""
        self._wake.set()

    def is_running(self, build_id: str) -> bool:
        return build_id in self._runs

    def _abandon(self, build_id: str) -> None:
        """Cancel the local run of a build that was stopped, deleted or taken over."""
        run = self._runs.get(build_id)
        if run is not None:
            run[1].cancel()

    # -- control: each a conditional store write, so that two instances acting on one build
    # -- (or an action racing the build's own progress) never both win ----------------------
    async def create(self, *, project: Project) -> tuple[Project, Build]:
        """Store a new project with its first build, queued; returns both as stored."""
        tenant_id = project.tenant_id
        build = new_build(tenant_id, project.project_id)
        now = build.created_at
        project = project.changed({
            "status": "pending", "progress": 0.0, "current_stage": None,
            "latest_build_id": build.build_id, "created_at": now, "updated_at": now})
        await self.store.create_project(tenant_id=tenant_id, project=project, build=build)
        self._wake_up()
        return project, build

    async def restart(self, *, tenant_id: str, project_id: str) -> bool:
        """Queue a new build of a project whose latest build is finished."""
        if not await self.store.add_build(tenant_id=tenant_id, build=new_build(tenant_id, project_id)):
            return False
        self._wake_up()
        return True

    async def _transition(self, build: Build, *moves: tuple[str, str]) -> bool:
        """The first of `moves` (from status, to status) that applies, the one matching the
        status read tried first: if the build moved on since, the other may still apply."""
        moves = tuple(sorted(moves, key=lambda move: move[0] != build.status))
        for before, after in moves:
            if await self.store.update_build(tenant_id=build.tenant_id, build_id=build.build_id,
                                             expect_status=(before,),
                                             changes={"status": after, "updated_at": utc_now()}):
                return True
        return False

    async def pause(self, build: Build) -> bool:
        """A queued build is paused at once. A running one is `pausing` until the step in
        progress ends: its engine settles it as `paused` there (an unowned one is claimed
        to be settled), so that no step is cut off and no model call is left running."""
        if not await self._transition(build, ("queued", "paused"), ("running", "pausing")):
            return False
        if build.owner is None:
            self._wake_up()
        return True

    async def resume(self, build: Build) -> bool:
        """A paused build continues from its first unfinished step (queued again if it never
        started); a pausing one keeps running, the pause called off."""
        if not await self._transition(build, ("paused", "running" if build.started_at else "queued"),
                                      ("pausing", "running")):
            return False
        self._wake_up()
        return True

    async def stop(self, build: Build) -> bool:
        """Cancel an active build: its unfinished stages are skipped and its run (here or on
        another instance, at its next write) ends with its model call."""
        stages = build.stages
        for step in (step for stage in stages for step in stage.steps()):
            if step.status in ("pending", "running"):
                step.status = "skipped"
        now = utc_now()
        # A build stopped before it started has no duration; one stopped later ran until now.
        duration = _seconds_between(build.started_at, now) if build.started_at else None
        if not await self.store.update_build(
                tenant_id=build.tenant_id, build_id=build.build_id,
                expect_status=ACTIVE_BUILD_STATUSES, changes={
                    "status": "cancelled", "finished_at": now, "updated_at": now, "owner": None,
                    "lease_until": None, "stages": stages, "current_stage": None,
                    "duration_seconds": duration}):
            return False
        self._abandon(build.build_id)
        metrics.record_build_finished(status="cancelled", duration_seconds=duration)
        return True

    async def delete_project(self, project: Project) -> bool:
        """Delete a project with everything under it, ending its build's run here."""
        if not await self.store.delete_project(tenant_id=project.tenant_id,
                                               project_id=project.project_id):
            return False
        if project.latest_build_id:
            self._abandon(project.latest_build_id)
        return True

    async def shutdown(self) -> None:
        """Stop taking builds and hand running ones back to the store, unowned, so that the
        next start (or another instance) resumes them at once."""
        self.accepting = False
        for loop in self._loops:
            loop.cancel()
        # Read now: a cancelled run forgets its build as it ends.
        runs = [(build_id, tenant_id, task) for build_id, (tenant_id, task) in self._runs.items()]
        for _, _, task in runs:
            task.cancel()
        await asyncio.gather(*self._loops, *(task for _, _, task in runs), return_exceptions=True)
        for build_id, tenant_id, _ in runs:
            try:
                await self.store.update_build(
                    tenant_id=tenant_id, build_id=build_id,
                    changes={"owner": None, "lease_until": None},
                    expect_status=ACTIVE_BUILD_STATUSES, expect_owner=self.instance_id)
            except StoreError:
                logger.exception("Could not hand back build on shutdown", extra={"build_id": build_id})

    async def _schedule(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._claim_free_slots()
            except StoreError:
                logger.exception("Build scheduler could not reach the store")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the wake-up does (shutdown cancels this loop while the cancelled
            # runs wake it), and the loop would poll forever.
            try:
                async with asyncio.timeout(SCHEDULE_POLL_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _claim_free_slots(self) -> None:
        free = self.max_concurrent_builds - len(self._runs)
        if free <= 0 or not self.accepting:
            return
        for build in await self.store.list_claimable_builds(now=utc_now(), limit=free):
            build_id, tenant_id = build.build_id, build.tenant_id
            claimed = await self.store.claim_build(
                tenant_id=tenant_id, build_id=build_id, owner=self.instance_id,
                lease_until=_after(self.lease_seconds), now=utc_now())
            if claimed:
                self._runs[build_id] = (tenant_id, asyncio.create_task(
                    self._run(tenant_id, build_id), name=f"build-{build_id}"))

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            # Only runs that existed before the renewal can be judged by its answer: a build
            # claimed while it was in flight is ours but may be missing from it.
            running = set(self._runs)
            try:
                owned = await self.store.renew_leases(owner=self.instance_id,
                                                      lease_until=_after(self.lease_seconds))
            except StoreError:
                logger.exception("Could not renew build leases")
                continue
            self._abandon_lost(running, {b.build_id for b in owned if b.status in HELD_BUILD_STATUSES})

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_POLL_SECONDS)
            if not self._runs:
                continue
            running = set(self._runs)
            try:
                held = await self.store.list_held_build_ids(owner=self.instance_id)
            except StoreError:
                continue  # the renewals log the store's failures; the next poll tries again
            self._abandon_lost(running, set(held))

    def _abandon_lost(self, running: set[str], held: set[str]) -> None:
        """Cancel the runs of `running` (read before `held` was) that this engine no longer
        holds, unless they are releasing the build themselves."""
        for build_id in running - held - self.releasing:
            self._abandon(build_id)

    async def _run(self, tenant_id: str, build_id: str) -> None:
        try:
            build = await self.store.get_build(tenant_id=tenant_id, build_id=build_id)
            project = build and await self.store.get_project(tenant_id=tenant_id,
                                                             project_id=build.project_id)
            if build is None or project is None:
                return
            bind(request_id=build.request_id, build_id=build_id, tenant_id=tenant_id,
                 project_id=project.project_id, user_id=project.user_id)
            run = BuildRun(self, build, project)
            metrics.build_started()
            try:
                await self._execute(run)
            finally:
                metrics.build_stopped()
        except asyncio.CancelledError:
            logger.info("Build run cancelled", extra={"build_id": build_id})
        except StoreError:
            logger.exception("Build lost its store; another start will resume it")
        finally:
            self._runs.pop(build_id, None)
            self.releasing.discard(build_id)
            self._wake_up()

    async def _execute(self, run: BuildRun) -> None:
        recoveries = run.build.recoveries
        try:
            if recoveries > MAX_RECOVERIES:
                await run.fail("interrupted",
                               f"the build's process died {recoveries} times; not resuming it again")
                return
            resumed = any(stage.status != "pending" for stage in run.stages)
            logger.info("Build resumed" if resumed else "Build started",
                        extra={"recoveries": recoveries, "progress": progress(run.stages)})
            try:
                await run.execute()
            except StageFailed as exc:
                await run.fail(exc.code, exc.message)
            except (BuildAbandoned, StoreError):
                raise
            except Exception as exc:
                logger.exception("Build crashed")
                await run.fail("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")
        except BuildAbandoned as exc:
            logger.info("Build run ended", extra={"reason": str(exc)})
