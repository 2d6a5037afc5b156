package keyworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

// adminTimeout bounds one admin request's HSM work.
const adminTimeout = 10 * time.Second

// startAdmin registers the pool's admin endpoints as a nats micro service.
func (s *Service) startAdmin() (micro.Service, error) {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        kwadmin.ServiceName,
		Version:     "1.0.0",
		Description: "sovkeys keyworker admin, pool " + s.cfg.Pool,
		Metadata:    map[string]string{"pool": s.cfg.Pool},
	})
	if err != nil {
		return nil, fmt.Errorf("keyworker: admin service: %w", err)
	}
	g := svc.AddGroup(shared.SubjectKeyworkerAdminPrefix+s.cfg.Pool, micro.WithGroupQueueGroup("kwadmin_"+s.cfg.Pool))
	endpoints := map[string]func(context.Context, []byte) (any, error){
		kwadmin.EndpointHealth:    s.adminHealth,
		kwadmin.EndpointKeyCreate: s.adminKeyCreate,
		kwadmin.EndpointKeyInfo:   s.adminKeyInfo,
		kwadmin.EndpointKeyList:   s.adminKeyList,
		kwadmin.EndpointSeal:      s.adminSeal,
		kwadmin.EndpointUnseal:    s.adminUnseal,
		kwadmin.EndpointIssueCert: s.adminIssueCert,
		auditlog.EndpointSign:     s.adminAuditSign, auditlog.EndpointPublicKey: s.adminAuditPublicKey,
	}
	endpoints[kwadmin.EndpointKeyVersion] = s.adminKeyVersion // admin_versions.go
	endpoints[kwadmin.EndpointApprove] = s.adminApprove       // admin_quorum.go
	endpoints[kwadmin.EndpointReject] = s.adminReject
	endpoints[kwadmin.EndpointKeyDestroy] = s.adminKeyDestroy // admin_destroy.go
	for name, fn := range endpoints {
		if err := g.AddEndpoint(name, s.adminHandler(name, fn)); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("keyworker: admin endpoint %s: %w", name, err)
		}
	}
	return svc, nil
}

func (s *Service) adminHandler(name string, fn func(context.Context, []byte) (any, error)) micro.HandlerFunc {
	return func(req micro.Request) {
		ctx, cancel := context.WithTimeout(context.Background(), adminTimeout) //nolint:contextcheck // a micro handler has no caller context
		defer cancel()
		ctx = context.WithValue(ctx, signatureKey{}, req.Headers().Get(kwadmin.HeaderSignature))
		var resp any
		var err error
		switch op := kwadmin.Op(name, req.Data()); {
		case op == "", name == kwadmin.EndpointKeyVersion, name == kwadmin.EndpointApprove, name == kwadmin.EndpointReject:
			// Reads and service calls; key versions and decisions verify
			// their signatures themselves (quorum).
			resp, err = fn(ctx, req.Data())
		default:
			resp, err = s.signedHandler(ctx, op, req.Data(), nil, fn)
		}
		if err != nil {
			if shared.CodeOf(err) == shared.CodeInternal {
				s.log.Error("admin request failed", "endpoint", name, "err", err)
			}
			_ = req.Error(string(shared.CodeOf(err)), shared.MessageOf(err), nil)
			return
		}
		if err := s.respond(ctx, req, name, resp); err != nil { // answers.go
			s.log.Error("admin answer failed", "endpoint", name, "err", err)
			_ = req.Error(string(shared.CodeInternal), "answer could not be signed", nil)
		}
	}
}

func decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return shared.NewError(shared.CodeValidation, "malformed admin request: %v", err)
	}
	return nil
}

func (s *Service) adminHealth(ctx context.Context, _ []byte) (any, error) {
	resp := kwadmin.HealthResponse{Pool: s.cfg.Pool, Model: s.cfg.Model, Status: kwadmin.HealthActive}
	if err := s.health(ctx); err != nil {
		resp.Status, resp.Detail = kwadmin.HealthUnavailable, "hsm round trip failed"
		return resp, nil
	}
	// The round trip worked; the session pool may still be recovering.
	if st, detail := s.hsm.SessionHealth(); st != hsm.HealthActive {
		resp.Status, resp.Detail = st, detail
	}
	return resp, nil
}

func info(k hsm.KeyInfo) kwadmin.KeyInfo {
	return kwadmin.KeyInfo{Label: k.Label, Encrypt: k.Encrypt, Decrypt: k.Decrypt, KeySpec: k.KeySpec}
}

func (s *Service) adminKeyCreate(ctx context.Context, data []byte) (any, error) {
	var req kwadmin.KeyRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if req.Label == "" || len(req.Label) > 128 {
		return nil, shared.NewError(shared.CodeValidation, "key label must be 1-128 characters")
	}
	k, err := s.hsm.CreateAESKey(ctx, req.Label, req.Encrypt, req.Decrypt)
	if errors.Is(err, hsm.ErrKeyExists) {
		return nil, shared.NewError(shared.CodeInvalidState, "an hsm key labelled %q already exists", req.Label)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("hsm key created", "label", req.Label, "encrypt", req.Encrypt, "decrypt", req.Decrypt)
	return info(k), nil
}

func (s *Service) adminKeyInfo(ctx context.Context, data []byte) (any, error) {
	var req kwadmin.KeyRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if hsm.IsVersionLabel(req.Label) {
		// A key version belongs to its key: binding it to another XKS key
		// (key create --existing) would share one HSM object between two.
		return nil, shared.NewError(shared.CodeValidation, "label %q names a version of another key", req.Label)
	}
	k, err := s.hsm.KeyInfo(ctx, req.Label)
	if err != nil {
		return nil, err
	}
	return info(k), nil
}

func (s *Service) adminKeyList(ctx context.Context, _ []byte) (any, error) {
	keys, err := s.hsm.ListAESKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]kwadmin.KeyInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, info(k))
	}
	return out, nil
}

func (s *Service) adminSeal(ctx context.Context, data []byte) (any, error) {
	var req kwadmin.SealRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if len(req.ReplyKey) == 0 || req.RequestID == "" {
		clear(req.Data)
		return nil, shared.NewError(shared.CodeValidation, "seal requests carry a reply key and request id")
	}
	if len(req.Data) > 0 || req.DataBox == nil {
		// Sent in clear, every holder of the pool's subjects could read it.
		clear(req.Data)
		return nil, shared.NewError(shared.CodeValidation, "seal requests carry their secret encrypted to the pool's box key (a CLI of this version)")
	}
	data, err := kwadmin.OpenRequest(s.boxKey, &req)
	if err != nil {
		return nil, shared.NewError(shared.CodeValidation, "seal request does not open with the pool's box key")
	}
	blob, err := s.hsm.Seal(ctx, data, req.AAD)
	clear(data)
	if err != nil {
		return nil, err
	}
	return boxReply(req, kwadmin.EndpointSeal, blob)
}

// boxReply answers a seal or unseal encrypted to the requester's key
// (shared/api/kwadmin, "Secrets on the wire"), then clears data.
func boxReply(req kwadmin.SealRequest, endpoint string, data []byte) (any, error) {
	box, err := kwadmin.SealReply(req.ReplyKey, endpoint, req.RequestID, data)
	clear(data)
	if err != nil {
		return nil, shared.NewError(shared.CodeValidation, "bad reply key")
	}
	return kwadmin.SealResponse{Box: box}, nil
}

func (s *Service) adminUnseal(ctx context.Context, data []byte) (any, error) {
	var req kwadmin.SealRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if len(req.ReplyKey) == 0 || req.RequestID == "" {
		// Fail closed: a secret never leaves in clear.
		return nil, shared.NewError(shared.CodeValidation, "unseal requests carry a reply key and request id")
	}
	pt, err := s.hsm.Unseal(ctx, req.Data, req.AAD)
	if err != nil {
		return nil, err
	}
	return boxReply(req, kwadmin.EndpointUnseal, pt)
}
