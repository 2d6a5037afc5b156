package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/tracing"
)

// handleXKS frames an XKS call. Authentication comes before payload
// validation (authn does both), so an unauthenticated caller learns nothing
// about payload rules; the gateway itself rejects only what it can see
// without credentials: the method, the path, the size.
func (s *Service) handleXKS(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	id := newID()
	released := false // the admission slot, once taken, is freed by roundTrip or on return
	route, err := xks.ParsePath(r.URL.EscapedPath())
	if shared.CodeOf(err) == shared.CodeKeyNotFound {
		// A key id no key can have: authenticate first, authn answers
		// KeyNotFoundException.
		err = nil
	}
	api := route.Op.API()
	noteAPI(w, api)
	if err == nil && r.Method != http.MethodPost {
		err = shared.NewError(shared.CodeMethodNotAllowed, "method %s not allowed; use POST", r.Method)
		w.Header().Set("Allow", http.MethodPost)
	}
	if err == nil {
		err = s.fresh() // stale.go
	}
	if err == nil {
		if _, ok := s.keystores.Get(registry.KeystoreKey(route.Prefix)); !ok {
			err = shared.NewError(shared.CodeInvalidURIPath, "no key store at this uri prefix")
		}
	}
	if err == nil && (api == shared.APIXKSEncrypt || api == shared.APIXKSDecrypt) {
		if stopped, why := s.kill.Engaged(killswitch.ScopeKeystore, route.Prefix); stopped {
			err = shared.NewError(shared.CodeInvalidState, "kill switch engaged (%s)", why)
		}
	}
	if err == nil && s.admit != nil {
		// Admission by deadline (admission.go), before the body is read: a
		// refusal costs no more than this.
		limit := start.Add(min(s.cfg.AdmitWithin, s.cfg.RequestTimeout))
		if aerr := s.admit.acquire(r.Context(), limit, time.After); aerr != nil {
			s.refuseAdmission(w, r, api, aerr, writeXKSError)
			return
		}
		defer func() {
			if !released {
				s.admit.release(0)
			}
		}()
	}
	var body []byte
	if err == nil {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, xks.MaxBodyBytes))
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = shared.NewError(shared.CodeUnsupportedOperation, "request body exceeds the supported %d bytes", xks.MaxBodyBytes)
		} else if err != nil {
			err = shared.NewError(shared.CodeValidation, "cannot read request body")
		}
	}
	if err != nil {
		s.reject(r.Context(), w, r, id, route, api, err)
		return
	}

	ctx, span := s.tracer.Start(r.Context(), "gateway "+string(api), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("sovkeys.request_id", id)))
	defer span.End()
	ctx, cancel := context.WithDeadline(ctx, start.Add(s.cfg.RequestTimeout))
	defer cancel()
	env := &shared.Envelope{
		Version: shared.EnvelopeVersion, ID: id, API: api,
		Received: start, Deadline: start.Add(s.cfg.RequestTimeout),
		ReplyTo: s.replySubject(), KeyStore: route.Prefix, KeyID: route.KeyID,
		Evidence: shared.Evidence{
			SourceIP: sourceIP(r), Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
			Host: r.Host, Header: r.Header,
		},
		Body: body,
	}
	sent := s.now()
	reply, err := s.roundTrip(ctx, env)
	if s.admit != nil {
		took := time.Duration(0)
		if err == nil {
			took = s.now().Sub(sent)
		}
		s.admit.release(took)
		released = true
	}
	if err != nil {
		span.SetStatus(codes.Error, string(shared.CodeOf(err)))
		if shared.CodeOf(err) == shared.CodeDependencyTimeout || shared.CodeOf(err) == shared.CodeThrottling {
			s.auditFailure(ctx, env, err)
		}
		s.refusals.Note(refusalReason(err), "xks request failed", "request_id", id, "api", api, "code", shared.CodeOf(err),
			"reason", shared.MessageOf(err), "ms", s.now().Sub(start).Milliseconds())
		writeXKSError(w, err)
		return
	}
	if rerr := mesh.ReplyErr(reply); rerr != nil {
		span.SetStatus(codes.Error, string(shared.CodeOf(rerr)))
		writeXKSError(w, rerr)
		return
	}
	writeAnswer(w, reply.Data)
}

// roundTrip publishes env to authn and waits for the answer.
func (s *Service) roundTrip(ctx context.Context, env *shared.Envelope) (*nats.Msg, error) {
	data, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(shared.RequestSubject(env.API)) // PublishRequest picks the sibling
	msg.Data = data
	msg.Header.Set(shared.HeaderMsgID, env.ID)
	tracing.Inject(ctx, msg.Header)
	ch := s.replies.register(env.ID)
	sent := time.Now()
	ack, err := mesh.PublishRequest(ctx, s.js, env.API, msg, mesh.PublishTry)
	if err != nil {
		s.replies.cancel(env.ID)
		if mesh.IsQueueFull(err) {
			return nil, &meshError{reason: metrics.ReasonQueue, err: shared.NewError(shared.CodeThrottling, "request queue is full, retry later")}
		}
		s.log.Debug("publish request failed", "request_id", env.ID, "err", err) // counted and logged (bounded) by the caller
		return nil, &meshError{reason: metrics.ReasonUnavailable, err: shared.NewError(shared.CodeDependencyTimeout, "key service mesh unavailable")}
	}
	reply, err := s.awaitAnswer(ctx, env, msg, ch, ack.Stream, sent, time.Now())
	if err != nil {
		return nil, &meshError{reason: metrics.ReasonTimeout, err: shared.NewError(shared.CodeDependencyTimeout, "no answer within %s", s.cfg.RequestTimeout)}
	}
	return reply, nil
}

// awaitAnswer waits for the answer of the request msg, stored on stream
// (its publish began at sent and was acked at acked). With siblings, an
// answer that takes longer than that sibling normally needs is overdue:
// the request is sent again on another sibling and the first answer wins
// (shared/infra/mesh/resend.go).
//
// Volume-secret requests are not resent: authn remembers their signature
// nonces, so a copy of one it has already seen would be refused as a
// replay, and that refusal could be the first answer.
func (s *Service) awaitAnswer(ctx context.Context, env *shared.Envelope, msg *nats.Msg, ch chan *nats.Msg, stream string, sent, acked time.Time) (*nats.Msg, error) {
	after := mesh.ResendAfter(s.js, stream)
	if strings.HasPrefix(string(env.API), "vs.") {
		after = 0
	}
	if after <= 0 {
		m, err := s.replies.wait(ctx, env.ID, ch)
		s.noteSlow(env, m, stream, false, sent, acked)
		return m, err
	}
	t := time.NewTimer(after - time.Since(sent))
	select {
	case m := <-ch:
		t.Stop()
		mesh.AnswerTook(s.js, stream, time.Since(sent))
		return m, nil
	case <-ctx.Done():
		t.Stop()
		s.replies.cancel(env.ID)
		return nil, ctx.Err()
	case <-t.C:
	}
	resent := mesh.ResendRequest(ctx, s.js, env.API, msg, stream) // in the background
	if resent {
		metrics.RequestResent(env.API)
	}
	m, err := s.replies.wait(ctx, env.ID, ch)
	if err == nil && !resent {
		// A late answer of a request that was not resent counts too (a
		// sibling that became slow for good must not look overdue on
		// every request); a resent one says nothing of its sibling.
		mesh.AnswerTook(s.js, stream, time.Since(sent))
	}
	s.noteSlow(env, m, stream, resent, sent, acked)
	return m, err
}

// slowAnswer: an answer slower than this is logged with where its time
// went (mesh.HeaderPhases), at most slowLogRate lines a second.
const (
	slowAnswer  = 100 * time.Millisecond
	slowLogRate = 10
)

// noteSlow logs the hop times of a slow answer m (nil: none came).
func (s *Service) noteSlow(env *shared.Envelope, m *nats.Msg, stream string, resent bool, sent, acked time.Time) {
	took := time.Since(sent)
	if took < slowAnswer || !s.slowLog.Allow() {
		return
	}
	phases := ""
	if m != nil {
		phases = mesh.PhasesSince(m.Header, sent)
	}
	s.log.Info("slow answer", "request_id", env.ID, "api", env.API, "ms", took.Milliseconds(), "stored_on", stream,
		"resent", resent, "answered", m != nil, "ack_ms", acked.Sub(sent).Milliseconds(), "phases_ms", phases)
}

// reject answers a request refused before it entered the mesh (before any
// credential was verified): it is counted in the unauthenticated summary,
// never audited in a scope named by its URL (mesh.NoiseAuditor).
func (s *Service) reject(_ context.Context, w http.ResponseWriter, r *http.Request, id string, route xks.Route, api shared.API, err error) {
	if api == "" {
		api = "xks.unknown"
	}
	noteAPI(w, api)
	s.noise.Add(api, shared.CodeOf(err), sourceIP(r))
	if shared.CodeOf(err) == shared.CodeDependencyTimeout {
		// Every 503 says why, at a bounded rate (stale.go).
		s.refusals.Note(metrics.ReasonStaleState, "xks request refused", "request_id", id, "api", api, "reason", shared.MessageOf(err))
	} else {
		s.log.Info("xks request rejected", "request_id", id, "method", r.Method, "code", shared.CodeOf(err), "reason", shared.MessageOf(err))
	}
	writeXKSError(w, err)
}

func (s *Service) auditFailure(ctx context.Context, env *shared.Envelope, err error) {
	// The unauthenticated scope: the key store is what the URL claims.
	s.publishRejection(ctx, env, &shared.AuditEvent{Kind: shared.AuditKindUnauthenticated,
		Params: map[string]string{"claimed_keystore": env.KeyStore, "claimed_key_id": env.KeyID}}, err)
}

// publishRejection audits a request the gateway answered itself (refused
// before the mesh, or timed out in it), before the answer is written.
func (s *Service) publishRejection(ctx context.Context, env *shared.Envelope, ev *shared.AuditEvent, err error) {
	ev.RequestID, ev.API, ev.Service = env.ID, env.API, shared.AuditServiceGateway
	ev.Start, ev.End, ev.SourceIP = env.Received, s.now(), env.Evidence.SourceIP
	ev.Result, ev.Code, ev.Reason, ev.TraceID = shared.ResultDenied, shared.CodeOf(err), shared.MessageOf(err), tracing.TraceID(ctx)
	if ev.Start.IsZero() {
		ev.Start = ev.End
	}
	if ev.Code == shared.CodeDependencyTimeout || ev.Code == shared.CodeThrottling || ev.Code == shared.CodeInternal {
		ev.Result = shared.ResultFailure
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.cfg.RequestTimeout)
	defer cancel()
	if aerr := s.publishAudit(actx, ev); aerr != nil {
		s.log.Error("audit publish failed", "request_id", env.ID, "err", aerr)
	}
}

func sourceIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// writeAnswer writes a service's JSON answer (which may carry plaintext or
// secrets: never cached).
func writeAnswer(w http.ResponseWriter, data []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

// publishAudit records ev through the service's batcher (mesh.AuditBatcher),
// or on its own before Run has started one.
func (s *Service) publishAudit(ctx context.Context, ev *shared.AuditEvent) error {
	if s.audit == nil {
		return mesh.PublishAudit(ctx, s.js, ev)
	}
	return s.audit.Publish(ctx, ev)
}

// meshError is a failure of the round trip through the mesh with the
// refusal reason it is counted under (metrics.Reason*).
type meshError struct {
	reason string
	err    error
}

func (e *meshError) Error() string { return e.err.Error() }
func (e *meshError) Unwrap() error { return e.err }

// refusalReason names the reason a failed round trip is counted under.
func refusalReason(err error) string {
	var me *meshError
	if errors.As(err, &me) {
		return me.reason
	}
	return metrics.ReasonUnavailable
}

// refuseAdmission answers a request admission refused: 429
// (ThrottlingException for XKS; write is the API's error writer) at once, counted by reason, logged at a bounded
// rate, and summarised in the unauthenticated audit summary (nothing was
// verified yet; mesh.NoiseAuditor) instead of an audit record each.
func (s *Service) refuseAdmission(w http.ResponseWriter, r *http.Request, api shared.API, err error, write func(http.ResponseWriter, error)) {
	reason, why := metrics.ReasonQueue, "request cancelled while waiting for admission"
	var ref *refusal
	if errors.As(err, &ref) {
		reason, why = ref.reason, ref.why
	}
	s.noise.Add(api, shared.CodeThrottling, sourceIP(r))
	s.refusals.Note(reason, "request refused by admission", "api", api, "reason", why)
	write(w, shared.NewError(shared.CodeThrottling, "%s", why))
}
