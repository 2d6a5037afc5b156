package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// auditOp records a control-plane change (or a refused one) in the operator
// log, durably, before the command reports success.
func (o *operator) auditOp(ctx context.Context, api string, start time.Time, params map[string]string, opErr error) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	ev := &shared.AuditEvent{
		RequestID: "op-" + hex.EncodeToString(b[:]), Kind: shared.AuditKindOperator, Scope: "",
		API: shared.API("operator." + api), Service: "cli", Start: start, End: time.Now(),
		CallerType: "operator", CallerID: o.who(), Result: shared.ResultSuccess, Params: params,
	}
	if opErr != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(opErr), opErr.Error()
	}
	if err := mesh.PublishAudit(ctx, o.js, ev); err != nil {
		return fmt.Errorf("the change was made but could not be audited: %w", err)
	}
	return nil
}

// audited runs fn and records it in the operator log.
func (o *operator) audited(ctx context.Context, api string, params map[string]string, fn func() error) error {
	start := time.Now()
	err := fn()
	if aerr := o.auditOp(ctx, api, start, params, err); aerr != nil && err == nil {
		return aerr
	}
	return err
}

// who names the operator in audit records and kill switches: USER@host,
// "unknown" for a part the system does not tell.
func (o *operator) who() string {
	user := o.getenv("USER")
	if user == "" {
		user = "unknown"
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return user + "@" + host
}
