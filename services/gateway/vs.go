package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// handleVS frames a volume-secret call. The caller's TLS client certificate
// chain travels as evidence; authn verifies it and the tenant.
func (s *Service) handleVS(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	id := newID()
	instanceID, op, err := vs.ParsePath(r.URL.EscapedPath())
	if err == nil && r.Method != http.MethodPost {
		err = shared.NewError(shared.CodeMethodNotAllowed, "method %s not allowed; use POST", r.Method)
	}
	if err == nil && r.TLS != nil && r.TLS.Version < tls.VersionTLS13 {
		// Volume-secret routes: TLS 1.3 only (2026-12-07); XKS keeps 1.2.
		err = shared.NewError(shared.CodeAccessDenied, "volume-secret requests need TLS 1.3")
	}
	if err == nil {
		err = s.fresh() // stale.go
	}
	if err == nil && s.kill.AllEngaged() {
		_, why := s.kill.Engaged(killswitch.ScopeAll, "")
		err = shared.NewError(shared.CodeAccessDenied, "kill switch engaged (%s)", why)
	}
	released := true
	if err == nil && s.admitVS != nil {
		// Admission by deadline, as for XKS (admission.go), before the body
		// is read, with its own slots: a volume-secret call costs the HSM an
		// RSA wrap and a signature, not one AES operation, so it must not
		// skew the XKS service time (and a burst of boots must not crowd out
		// KMS). Its budget is the whole request timeout: an instance at boot
		// waits longer than KMS does, and retries a 429.
		if aerr := s.admitVS.acquire(r.Context(), start.Add(s.cfg.RequestTimeout), time.After); aerr != nil {
			noteAPI(w, op.API())
			s.refuseAdmission(w, r, op.API(), aerr, writeVSError)
			return
		}
		released = false
		defer func() {
			if !released {
				s.admitVS.release(0)
			}
		}()
	}
	var body []byte
	if err == nil {
		body, err = io.ReadAll(io.LimitReader(r.Body, vs.MaxBodyBytes+1))
		if err != nil {
			err = shared.NewError(shared.CodeValidation, "cannot read request body")
		} else if len(body) > vs.MaxBodyBytes {
			err = shared.NewError(shared.CodeValidation, "request body exceeds %d bytes", vs.MaxBodyBytes)
		}
	}
	awsIdentity, aerr := awsIdentityHeader(r) // proxy.go
	if err == nil {
		err = aerr
	}
	srcIP, srcVPC := s.origin(r) // trusted proxy mode, proxy.go
	api := op.API()
	noteAPI(w, api)
	env := &shared.Envelope{
		Version: shared.EnvelopeVersion, ID: id, API: api,
		Received: start, Deadline: start.Add(s.cfg.RequestTimeout),
		ReplyTo: s.replySubject(),
		Evidence: shared.Evidence{
			SourceIP: srcIP, Method: r.Method, Path: r.URL.EscapedPath(), Host: r.Host,
			InstanceID: instanceID, ClientCerts: peerCerts(r),
			AWSIdentity: awsIdentity, SourceVPC: srcVPC,
			Header: signatureHeaders(r),
		},
		Body: body,
	}
	if err != nil {
		if env.API == "" {
			env.API = "vs.unknown"
		}
		noteAPI(w, env.API)
		s.noise.Add(env.API, shared.CodeOf(err), srcIP) // refused before authentication
		if shared.CodeOf(err) == shared.CodeDependencyTimeout {
			// Every 503 says why, at a bounded rate (stale.go), as for XKS.
			s.refusals.Note(metrics.ReasonStaleState, "volume-secret request refused", "request_id", id, "api", env.API, "reason", shared.MessageOf(err))
		}
		writeVSError(w, err)
		return
	}
	ctx, span := s.tracer.Start(r.Context(), "gateway "+string(api), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("sovkeys.request_id", id)))
	defer span.End()
	ctx, cancel := context.WithDeadline(ctx, env.Deadline)
	defer cancel()
	sent := s.now()
	reply, err := s.roundTrip(ctx, env)
	if s.admitVS != nil {
		took := time.Duration(0)
		if err == nil {
			took = s.now().Sub(sent)
		}
		s.admitVS.release(took)
		released = true
	}
	if err == nil {
		err = mesh.ReplyErr(reply)
	} else {
		if c := shared.CodeOf(err); c == shared.CodeDependencyTimeout || c == shared.CodeThrottling {
			s.auditVSFailure(ctx, env, err)
		}
		// Counted by reason and logged at a bounded rate, as for XKS.
		s.refusals.Note(refusalReason(err), "volume-secret request failed", "request_id", id, "api", api,
			"code", shared.CodeOf(err), "reason", shared.MessageOf(err), "ms", s.now().Sub(start).Milliseconds())
	}
	if err != nil {
		span.SetStatus(codes.Error, string(shared.CodeOf(err)))
		writeVSError(w, err)
		return
	}
	writeAnswer(w, reply.Data)
}

func (s *Service) auditVSFailure(ctx context.Context, env *shared.Envelope, err error) {
	s.publishRejection(ctx, env, &shared.AuditEvent{
		Kind: shared.AuditKindUnauthenticated, Params: map[string]string{"claimed_instance": env.Evidence.InstanceID},
	}, err)
}

// signatureHeaders are the request-signature headers (vs.SignRequest,
// RFC 9421) authn verifies against the instance's certificate.
func signatureHeaders(r *http.Request) map[string][]string {
	var h map[string][]string
	for _, k := range []string{vs.HeaderContentDigest, vs.HeaderSignatureInput, vs.HeaderSignature} {
		if v := r.Header.Values(k); len(v) > 0 {
			if h == nil {
				h = map[string][]string{}
			}
			h[k] = v
		}
	}
	return h
}

func peerCerts(r *http.Request) [][]byte {
	if r.TLS == nil {
		return nil
	}
	out := make([][]byte, 0, len(r.TLS.PeerCertificates))
	for _, c := range r.TLS.PeerCertificates {
		out = append(out, c.Raw)
	}
	return out
}

// handlePublicSigningKey serves the service signing key (DER SPKI) of the
// volume-secret pool, as published by its keyworkers in KV.
func (s *Service) handlePublicSigningKey(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeVSError(w, shared.NewError(shared.CodeMethodNotAllowed, "method %s not allowed; use GET", r.Method))
		return
	}
	der, err := s.signingKey(r.Context())
	if err != nil {
		writeVSError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, vs.PublicKeyResponse{PublicKey: der})
}

// auditSignPool is the pool whose HSM signs audit checkpoints.
func (s *Service) auditSignPool() string {
	if s.cfg.AuditSignPool == "" {
		return "default"
	}
	return s.cfg.AuditSignPool
}

// handleAuditPublicKey serves the audit checkpoint key (DER SPKI in JSON;
// ?format=pem for PEM), so customers can verify exported audit logs.
func (s *Service) handleAuditPublicKey(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeVSError(w, shared.NewError(shared.CodeMethodNotAllowed, "method %s not allowed; use GET", r.Method))
		return
	}
	e, err := s.pki.Get(r.Context(), auditlog.PKIKey(s.auditSignPool()))
	if err != nil {
		writeVSError(w, shared.NewError(shared.CodeDependencyTimeout, "audit key not published yet"))
		return
	}
	if r.URL.Query().Get("format") == "pem" {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(auditlog.PublicKeyPEM(e.Value()))
		return
	}
	writeJSON(w, http.StatusOK, vs.PublicKeyResponse{PublicKey: e.Value()})
}

// handleHealthcheck is the volume-secret API's health: 204 when the mesh is
// ready, 503 otherwise.
func (s *Service) handleHealthcheck(w http.ResponseWriter, r *http.Request) {
	if s.ready(r.Context()) {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
}

func (s *Service) signingKey(ctx context.Context) ([]byte, error) {
	e, err := s.pins.Get(ctx, shared.PKISigningKey(s.cfg.VolumePool)) // pinned write-once by the pool's keyworkers
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, shared.NewError(shared.CodeDependencyTimeout, "signing key unavailable")
		}
		return nil, shared.NewError(shared.CodeDependencyTimeout, "signing key not published yet")
	}
	return e.Value(), nil
}
