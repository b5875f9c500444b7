"""The qlorad client: one channel, one method per RPC, errors as QloradError."""

import os
import shutil
import tempfile
import time
import uuid

import grpc

from ._gen.qlorad.v1 import (
    adapters_pb2, adapters_pb2_grpc, datasets_pb2, datasets_pb2_grpc, devices_pb2,
    devices_pb2_grpc, inference_pb2, inference_pb2_grpc, jobs_pb2, jobs_pb2_grpc, limits_pb2,
    limits_pb2_grpc, models_pb2, models_pb2_grpc)

UPLOAD_CHUNK_BYTES = 1 << 20
TERMINAL_STATES = frozenset({jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED})
_HYPERPARAMETERS = frozenset(jobs_pb2.Hyperparameters.DESCRIPTOR.fields_by_name)
_CLIENT_TIMEOUT = object()  # a call's timeout left to the client's
_CREATE_TRIES = 3  # of a create whose outcome is unknown, with its idempotency key
_OUTCOME_UNKNOWN_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL", "ABORTED", "CANCELLED"})


class QloradError(Exception):
    """A failed call. .code is the gRPC status name ("NOT_FOUND", "UNAVAILABLE", ...), .message
    the server's text. Also raised, with code "INTERNAL", when a download stream breaks the
    protocol (unsafe file name, a file cut short)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, e):
        code = e.code() if callable(getattr(e, "code", None)) else None
        details = e.details() if callable(getattr(e, "details", None)) else None
        return cls(code.name if code is not None else "UNKNOWN", details or str(e))


def _is_bytes(x):
    return isinstance(x, (bytes, bytearray, memoryview))


_STAGING_PREFIX = ".qlorad-download-"  # qloractl's too: each cleans up after the other


def _remove_abandoned_staging(out_dir):
    """Staging folders of downloads killed outright (the process ended before its cleanup) stay
    behind; one untouched for an hour (neither the folder nor a file being written in it) is no
    download in progress any more, and goes."""
    cutoff = time.time() - 3600
    for entry in os.scandir(out_dir):
        try:
            if not entry.name.startswith(_STAGING_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            newest = max([entry.stat(follow_symlinks=False).st_mtime]
                         + [f.stat(follow_symlinks=False).st_mtime for f in os.scandir(entry.path)])
            if newest < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass


def _utf8_name(name):
    """A name as the API's UTF-8 string: a file name the file system gave as undecodable bytes
    (a Latin-1 name, which Python spells with surrogates) keeps its readable part, the rest
    becomes U+FFFD, as qloractl does."""
    if _is_bytes(name):
        return bytes(name).decode("utf-8", "replace")
    name = os.fspath(name)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made: U+FFFD as well
        return name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class Client:
    """A connection to qlorad.

    target: "host:port"; None takes $QLORAD_SERVER, else 127.0.0.1:50051 (as qloractl does).
    token: the API key sent as "authorization: Bearer <token>"; None takes $QLORAD_TOKEN, ""
    sends none. root_certificates: PEM bytes, or a path to a PEM file, for TLS; None is a
    plaintext channel. timeout: deadline in seconds of each short unary call (30 s, as qloractl;
    None: none).
    Calls that may take long have a timeout argument of their own instead, with no deadline by
    default: streams, uploads, model registration (quantizing) and evaluation.
    """

    def __init__(self, target=None, token=None, root_certificates=None,
                 max_message_bytes=64 << 20, timeout=30.0):
        if target is None:
            target = os.environ.get("QLORAD_SERVER") or "127.0.0.1:50051"
        if token is None:
            token = os.environ.get("QLORAD_TOKEN", "")
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        self.timeout = timeout
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   # A daemon that vanished sends no FIN: a ping every 30 s during a call,
                   # unanswered for 20 s, ends the call with UNAVAILABLE (qlorad accepts pings
                   # 20 s apart). A restarted daemon is found again within 10 s.
                   ("grpc.keepalive_time_ms", 30000),
                   ("grpc.keepalive_timeout_ms", 20000),
                   ("grpc.http2.max_pings_without_data", 0),
                   ("grpc.max_reconnect_backoff_ms", 10000)]
        if root_certificates is not None:
            if not _is_bytes(root_certificates):
                with open(root_certificates, "rb") as f:
                    root_certificates = f.read()
            creds = grpc.ssl_channel_credentials(root_certificates=bytes(root_certificates))
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)
        self._datasets = datasets_pb2_grpc.DatasetServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._adapters = adapters_pb2_grpc.AdapterServiceStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._limits = limits_pb2_grpc.LimitsServiceStub(self._channel)
        self._devices = devices_pb2_grpc.DeviceServiceStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------------

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _unary(self, method, request, timeout=_CLIENT_TIMEOUT):
        """timeout: seconds, None for no deadline; by default the client's."""
        if timeout is _CLIENT_TIMEOUT:
            timeout = self.timeout
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as e:
            raise QloradError.from_rpc_error(e) from None

    def _stream(self, method, request, timeout=None):
        """Iterates a server stream; closing the iterator early cancels the call."""
        call = method(request, metadata=self._metadata, timeout=timeout)
        try:
            for item in call:
                yield item
        except grpc.RpcError as e:
            raise QloradError.from_rpc_error(e) from None
        finally:
            call.cancel()  # no-op once the call has ended

    # -- models (admin) -------------------------------------------------------------------------

    def register_model(self, name, path, timeout=None):
        return self._unary(self._models.RegisterModel,
                           models_pb2.RegisterModelRequest(name=name, path=str(path)),
                           timeout=timeout)

    def list_models(self):
        return list(self._unary(self._models.ListModels, models_pb2.ListModelsRequest()).models)

    def get_model(self, name):
        return self._unary(self._models.GetModel, models_pb2.GetModelRequest(name=name))

    def delete_model(self, name):
        self._unary(self._models.DeleteModel, models_pb2.DeleteModelRequest(name=name))

    # -- datasets -------------------------------------------------------------------------------

    def upload_dataset(self, path_or_bytes, name=None, timeout=None):
        """Uploads JSONL (a path, or the bytes); returns the stored Dataset. name defaults to the
        file's base name. timeout: seconds for the whole upload (None: no deadline)."""
        in_memory = _is_bytes(path_or_bytes)
        if name is None:
            name = "" if in_memory else os.path.basename(os.fspath(path_or_bytes))
        header = datasets_pb2.UploadDatasetRequest(
            header=datasets_pb2.DatasetHeader(name=_utf8_name(name)))
        if in_memory:
            data = bytes(path_or_bytes)
            f = None
        else:
            f = open(path_or_bytes, "rb")  # open here: a missing file is an OSError, not an RPC
        failure = []  # what went wrong on this side while the requests were sent

        def requests():
            try:
                yield header
                if f is None:
                    for i in range(0, len(data), UPLOAD_CHUNK_BYTES):
                        yield datasets_pb2.UploadDatasetRequest(
                            chunk=data[i:i + UPLOAD_CHUNK_BYTES])
                else:
                    while True:
                        chunk = f.read(UPLOAD_CHUNK_BYTES)
                        if not chunk:
                            break
                        yield datasets_pb2.UploadDatasetRequest(chunk=chunk)
            except Exception as e:
                failure.append(e)
                raise

        try:
            return self._unary(self._datasets.UploadDataset, requests(), timeout=timeout)
        except QloradError:
            if failure:  # gRPC reports it as UNKNOWN "Exception iterating requests!"
                raise failure[0] from None
            raise
        finally:
            if f is not None:
                f.close()

    def list_datasets(self):
        return list(self._unary(self._datasets.ListDatasets,
                                datasets_pb2.ListDatasetsRequest()).datasets)

    def get_dataset(self, id):
        return self._unary(self._datasets.GetDataset, datasets_pb2.GetDatasetRequest(id=id))

    def delete_dataset(self, id):
        self._unary(self._datasets.DeleteDataset, datasets_pb2.DeleteDatasetRequest(id=id))

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(self, model, training_dataset, validation_dataset="", suffix="", labels=None,
                   idempotency_key=None, priority=0, **hyperparameters):
        """Queues a fine-tune job; returns the Job. Keyword arguments beyond these are
        Hyperparameters fields (rank=8, learning_rate=2e-4, target_modules=["q_proj"], ...);
        None leaves a field unset (the server's default).

        idempotency_key: None sends a fresh one (as qloractl does), "" none. Where the answer
        leaves the outcome unknown (UNAVAILABLE, a deadline; ABORTED: a job stored, not queued) the
        same request is sent twice more with the key, 1 s and 2 s later; the error raised then
        names the key, with which a later call gets that one job rather than a second."""
        unknown = sorted(set(hyperparameters) - _HYPERPARAMETERS)
        if unknown:
            raise TypeError(f"create_job() got unknown hyperparameters: {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(_HYPERPARAMETERS))})")
        hp = jobs_pb2.Hyperparameters()
        for key, value in hyperparameters.items():
            if value is None:
                continue
            if key == "target_modules":
                if isinstance(value, str):  # "q_proj,v_proj", as qloractl takes it
                    value = [v.strip() for v in value.split(",") if v.strip()]
                hp.target_modules.extend(value)
            else:
                setattr(hp, key, value)
        if idempotency_key is None:
            idempotency_key = "python-" + uuid.uuid4().hex[:16]
        request = jobs_pb2.CreateJobRequest(
            model=model, training_dataset=training_dataset, validation_dataset=validation_dataset,
            hyperparameters=hp, suffix=suffix, labels=dict(labels or {}),
            idempotency_key=idempotency_key, priority=priority)
        for attempt in range(1, _CREATE_TRIES + 1):
            try:
                return self._unary(self._jobs.CreateJob, request)
            except QloradError as e:
                if not idempotency_key or e.code not in _OUTCOME_UNKNOWN_CODES:
                    raise
                if attempt == _CREATE_TRIES:
                    raise QloradError(e.code, f"{e.message}\nThe job may have been stored: call "
                                      f"create_job again with idempotency_key="
                                      f"{idempotency_key!r} to get it rather than a second "
                                      f"one") from None
                time.sleep(attempt)

    def get_job(self, id):
        return self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(id=id))

    def list_jobs(self, states=None, labels=None):
        """All the tenant's jobs (every page), optionally only those in states (JobState values
        or names like "RUNNING") carrying all of labels."""
        states = [jobs_pb2.JobState.Value(s.upper()) if isinstance(s, str) else s
                  for s in states or ()]
        jobs, token = [], ""
        while True:
            page = self._unary(self._jobs.ListJobs, jobs_pb2.ListJobsRequest(
                states=states, labels=dict(labels or {}), page_token=token))
            jobs.extend(page.jobs)
            if not page.next_page_token or page.next_page_token == token:
                return jobs
            token = page.next_page_token

    def cancel_job(self, id):
        """Cancels a job and returns it: CANCELLED, or still RUNNING where the call's wait for a
        running one to stop ran out (it stops all the same). A job that had already stored its
        adapter is not cancelled: it comes back SUCCEEDED with that adapter."""
        return self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(id=id))

    def pause_job(self, id):
        """Stops a queued or running job (a running one with a checkpoint of its last step) and
        keeps it PAUSED, holding no device or quota, until resume_job."""
        return self._unary(self._jobs.PauseJob, jobs_pb2.PauseJobRequest(id=id))

    def resume_job(self, id):
        """Queues a paused job again; it goes on from its checkpoint."""
        return self._unary(self._jobs.ResumeJob, jobs_pb2.ResumeJobRequest(id=id))

    def delete_job(self, id):
        """Deletes a finished job's record and events; its adapter stays."""
        self._unary(self._jobs.DeleteJob, jobs_pb2.DeleteJobRequest(id=id))

    def job_events(self, id, after_sequence=0):
        """The job's stored events after after_sequence (every page), as a list."""
        events = []
        while True:
            page = self._unary(self._jobs.ListJobEvents, jobs_pb2.ListJobEventsRequest(
                id=id, after_sequence=after_sequence))
            events.extend(page.events)
            if not page.events or page.next_after_sequence <= after_sequence:
                return events
            after_sequence = page.next_after_sequence

    def watch_job(self, id, after_sequence=0, timeout=None):
        """Iterator of JobEvent: the stored ones after after_sequence, then live ones until the
        job ends. Closing it (or breaking out of a for loop over it) cancels the stream."""
        return self._stream(self._jobs.WatchJob,
                            jobs_pb2.WatchJobRequest(id=id, after_sequence=after_sequence),
                            timeout=timeout)

    def wait_job(self, id, on_event=None, timeout=None, reconnect_for=600):
        """Follows the job's events (on_event(event) for each) until it ends or is PAUSED;
        returns the Job as it is then (check its state). timeout (seconds) bounds the whole wait: QloradError("DEADLINE_EXCEEDED") past it.

        A daemon that restarts (SIGTERM ends its watches with UNAVAILABLE; the job resumes after
        the start) or is out of reach for a while does not end the wait: it watches again from
        the last event seen, after a pause that doubles from 1 s up to 10 s, until the daemon has
        been out of reach for reconnect_for seconds (then the UNAVAILABLE error is raised)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        after = 0
        unreachable_since, pause = None, 1.0
        idle_resumes = 0  # streams in a row that ended with no event, the job not ended
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QloradError("DEADLINE_EXCEEDED", f"job {id} still running after {timeout}s")
            new_events = False
            try:
                for event in self.watch_job(id, after_sequence=after, timeout=remaining):
                    new_events = True
                    unreachable_since, pause = None, 1.0
                    after = max(after, event.sequence)
                    if on_event is not None:
                        on_event(event)
                job = self.get_job(id)
            except QloradError as e:
                # A daemon stopping refuses new calls with CANCELLED before its port closes (then
                # UNAVAILABLE); this client cancels none of these calls itself.
                if e.code not in ("UNAVAILABLE", "CANCELLED"):
                    raise
                now = time.monotonic()
                if unreachable_since is None:
                    unreachable_since = now
                if now - unreachable_since >= reconnect_for:
                    raise
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - now))
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            unreachable_since, pause = None, 1.0
            if job.state in TERMINAL_STATES or job.state == jobs_pb2.PAUSED:
                return job
            # The stream ended cleanly before the end: pick up where it left, but not forever
            # (as qloractl: three resumes in a row without an event).
            idle_resumes = 0 if new_events else idle_resumes + 1
            if idle_resumes >= 3:
                raise QloradError("UNAVAILABLE", f"the event stream of job {id} keeps ending "
                                  f"while the job is {jobs_pb2.JobState.Name(job.state)}")
            time.sleep(0.2)

    # -- adapters -------------------------------------------------------------------------------

    def list_adapters(self):
        return list(self._unary(self._adapters.ListAdapters,
                                adapters_pb2.ListAdaptersRequest()).adapters)

    def get_adapter(self, id):
        return self._unary(self._adapters.GetAdapter, adapters_pb2.GetAdapterRequest(id=id))

    def delete_adapter(self, id):
        self._unary(self._adapters.DeleteAdapter, adapters_pb2.DeleteAdapterRequest(id=id))

    def download_adapter(self, id, out_dir, rslora_as_plain=False, timeout=None):
        """Writes the adapter's PEFT files into out_dir (created if needed); returns their paths
        in the order received. The files arrive in a hidden staging folder inside out_dir and
        move into place only once the whole download has come: a download cut short leaves
        out_dir as it was, so an older adapter's files there are never mixed with this one's, and
        a download that fails removes the folders it made (while empty)."""
        # The highest folder this download makes, taken away again if it fails.
        created = None
        probe = os.path.abspath(out_dir)
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            created, probe = probe, os.path.dirname(probe)
        os.makedirs(out_dir, exist_ok=True)
        _remove_abandoned_staging(out_dir)
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_dir)
        request = adapters_pb2.DownloadAdapterRequest(id=id, rslora_as_plain=rslora_as_plain)
        names = []
        current, f = None, None  # name and staged file of the file being received
        stream = self._stream(self._adapters.DownloadAdapter, request, timeout=timeout)
        try:
            for chunk in stream:
                name = chunk.file_name or current
                if name is None:
                    raise QloradError("INTERNAL", "download: a chunk without a file name")
                if name != current:
                    if current is not None:
                        raise QloradError("INTERNAL", f"download: {current} cut short")
                    if (name in (".", "..") or "/" in name or "\\" in name or ".." in name
                            or "\0" in name):
                        raise QloradError("INTERNAL", f"download: unsafe file name {name!r}")
                    if name in names:
                        raise QloradError("INTERNAL", f"download: {name} sent twice")
                    names.append(name)
                    current = name
                    f = open(os.path.join(staging, name), "wb")
                f.write(chunk.data)
                if chunk.end_of_file:
                    f.close()
                    f = None
                    current = None
            if current is not None:
                raise QloradError("INTERNAL", f"download: {current} cut short")
            if not names:
                raise QloradError("INTERNAL", f"download: adapter {id} came without files")
            paths = []
            for name in names:
                path = os.path.join(out_dir, name)
                os.replace(os.path.join(staging, name), path)
                paths.append(path)
            created = None  # the folders hold the adapter now
            return paths
        finally:
            stream.close()
            if f is not None:
                f.close()
            shutil.rmtree(staging, ignore_errors=True)
            if created is not None:  # failed: the empty folders it made go
                folder = os.path.abspath(out_dir)
                while True:
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break
                    if folder == created:
                        break
                    folder = os.path.dirname(folder)

    # -- inference ------------------------------------------------------------------------------

    def generate_stream(self, model, prompt="", adapter_id="", max_tokens=64, temperature=0.0,
                        top_p=1.0, seed=None, timeout=None, messages=None):
        """Yields the GenerateResponse messages as the text is made: `text` each, and on the last
        one (`finished`) `finish_reason` ("eos" or "max_tokens"), `tokens` and the `seed` sampled
        with. Leaving the loop early ends the generation. `seed` None: the daemon draws one.
        messages: instead of prompt, a conversation ([{"role": "user", "content": "Hi"}], as in
        a chat dataset), answered as the assistant's next message in the layout jobs train on."""
        request = inference_pb2.GenerateRequest(
            model=model, adapter_id=adapter_id, prompt=prompt, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p)
        for m in messages or ():
            request.messages.add(role=m["role"], content=m["content"])
        if seed is not None:
            request.seed = seed
        return self._stream(self._inference.Generate, request, timeout=timeout)

    def generate(self, model, prompt="", adapter_id="", max_tokens=64, temperature=0.0,
                 top_p=1.0, seed=None, timeout=None, messages=None):
        """The generated text (the stream's pieces joined). For the finish reason and the seed
        sampled with, or the text as it comes, use generate_stream (messages: as there)."""
        return "".join(r.text for r in self.generate_stream(
            model, prompt, adapter_id=adapter_id, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, seed=seed, timeout=timeout, messages=messages))

    def evaluate(self, model, adapter_id, dataset_id, timeout=None):
        return self._unary(self._inference.Evaluate, inference_pb2.EvaluateRequest(
            model=model, adapter_id=adapter_id, dataset_id=dataset_id), timeout=timeout)

    # -- limits ---------------------------------------------------------------------------------

    def get_limits(self, model=""):
        return self._unary(self._limits.GetLimits, limits_pb2.GetLimitsRequest(model=model))

    # -- devices --------------------------------------------------------------------------------

    def list_devices(self):
        """The node's training devices (ListDevicesResponse: .devices, each with its memory by
        category and whether it is lost; .max_job_bytes; .inference_device)."""
        return self._unary(self._devices.ListDevices, devices_pb2.ListDevicesRequest())
