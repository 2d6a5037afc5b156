package keyworker

// The key_version admin endpoint: rotation and the life of old versions
// (internal/hsm/versions.go keeps them in the HSM). Every change is audited
// by the keyworker, with the version, before it answers.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"time"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

func (s *Service) adminKeyVersion(ctx context.Context, data []byte) (any, error) {
	var req kwadmin.KeyVersionRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if req.Label == "" || len(req.Label) > 128 {
		return nil, shared.NewError(shared.CodeValidation, "key label must be 1-128 characters")
	}
	if req.Action == kwadmin.VersionList {
		return s.versionView(ctx, req.Label, kwadmin.KeyVersionResponse{})
	}
	return s.signedKeyVersion(ctx, req, data) // admin_quorum.go
}

// applyKeyVersion makes the change a verified (and, where needed,
// approved) request asks for; ctx names the person.
func (s *Service) applyKeyVersion(ctx context.Context, req kwadmin.KeyVersionRequest) (any, error) {
	req.Operator = personOf(ctx)
	start := s.now()
	resp, err := s.changeVersion(ctx, req)
	version := resp.Changed
	if version == 0 {
		version = req.Version
	}
	if aerr := s.auditVersionChange(ctx, req, version, resp, start, err); aerr != nil {
		if err == nil {
			return nil, aerr
		}
		s.log.Error("key version change: audit publish failed", "err", aerr)
	}
	if err != nil {
		return nil, err
	}
	return s.versionView(ctx, req.Label, resp)
}

func (s *Service) changeVersion(ctx context.Context, req kwadmin.KeyVersionRequest) (kwadmin.KeyVersionResponse, error) {
	var resp kwadmin.KeyVersionResponse
	var err error
	switch req.Action {
	case kwadmin.VersionRotate:
		var kv hsm.KeyVersion
		kv, err = s.hsm.RotateKey(ctx, req.Label)
		resp.Changed = kv.Version
	case kwadmin.VersionDecryptOnly, kwadmin.VersionDisable, kwadmin.VersionEnable:
		change := map[string]string{kwadmin.VersionDecryptOnly: hsm.SetDecryptOnly, kwadmin.VersionDisable: hsm.SetDisabled,
			kwadmin.VersionEnable: hsm.SetEnabled}[req.Action]
		_, err = s.hsm.SetVersionState(ctx, req.Label, req.Version, change)
		resp.Changed = req.Version
	case kwadmin.VersionSchedule:
		resp, err = s.schedule(ctx, req)
	case kwadmin.VersionDestroy:
		resp.Confirm, resp.Destroyed, err = s.hsm.DestroyVersion(ctx, req.Label, req.Version, req.Confirm)
		resp.Changed = req.Version
		if resp.Destroyed {
			resp.Confirm = ""
		}
	default:
		return resp, shared.NewError(shared.CodeValidation, "unknown key version action %q", req.Action)
	}
	switch {
	case errors.Is(err, hsm.ErrNewestVersion), errors.Is(err, hsm.ErrNotDisabled), errors.Is(err, hsm.ErrConfirm), errors.Is(err, hsm.ErrConcurrentRotation):
		return resp, shared.NewError(shared.CodeInvalidState, "%s", err.Error())
	case errors.Is(err, hsm.ErrNoSuchVersion):
		return resp, shared.NewError(shared.CodeKeyNotFound, "%s", err.Error())
	}
	return resp, err
}

func (s *Service) versionView(ctx context.Context, label string, resp kwadmin.KeyVersionResponse) (kwadmin.KeyVersionResponse, error) {
	vs, err := s.hsm.KeyVersions(ctx, label)
	if err != nil {
		return resp, err
	}
	resp.Label = label
	if resp.RotateEverySeconds == 0 {
		s.rotationView(ctx, label, &resp)
	}
	for _, v := range vs {
		resp.Versions = append(resp.Versions, kwadmin.KeyVersionInfo{Version: v.Version, State: v.State, Encrypt: v.Encrypt, Decrypt: v.Decrypt})
	}
	return resp, nil
}

// auditVersionChange records a version change (or a refused one) with the
// version it touched, in the key store's XKS audit scope.
func (s *Service) auditVersionChange(ctx context.Context, req kwadmin.KeyVersionRequest, version int, resp kwadmin.KeyVersionResponse,
	start time.Time, opErr error) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	caller := shared.CallerTypePerson
	if req.Action == "auto-rotate" {
		caller = "service"
	}
	ev := &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: "kv-" + hex.EncodeToString(b[:]), Kind: shared.AuditKindXKS, Scope: req.Keystore,
		API: shared.API("xks.key.version." + req.Action), Service: "keyworker", Start: start, End: s.now(),
		CallerType: caller, CallerID: req.Operator, KeyID: req.KeyID, Result: shared.ResultSuccess,
		Params: map[string]string{"pool": s.cfg.Pool, "label": req.Label, "key_version": strconv.Itoa(version)},
	}
	if req.Action == kwadmin.VersionDestroy {
		ev.Params["destroyed"] = strconv.FormatBool(resp.Destroyed)
	}
	if req.Action == kwadmin.VersionSchedule {
		ev.Params["rotate_every_seconds"] = strconv.FormatInt(req.EverySeconds, 10)
	}
	if opErr != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(opErr), shared.MessageOf(opErr)
	}
	return mesh.PublishAudit(ctx, s.js, ev)
}
