package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// Operator log phases: every change is audited twice, its intent before it
// is applied and its result after.
const (
	phaseIntent = "intent"
	phaseResult = "result"
)

// errIntentNotAudited: the change was not applied because its intent could
// not be recorded first.
var errIntentNotAudited = errors.New("sovkeys: the change was NOT applied: its intent could not be audited")

// auditOp records one phase of a control-plane change in the operator log,
// durably (JetStream ack), under the operation id opID.
func (o *operator) auditOp(ctx context.Context, opID, phase, api string, start time.Time, params map[string]string, opErr error) error {
	signer, err := o.person()
	if err != nil {
		return err
	}
	p := make(map[string]string, len(params)+2)
	for k, v := range params {
		p[k] = v
	}
	p["phase"], p["op_id"] = phase, opID
	ev := &shared.AuditEvent{
		RequestID: opID + "." + phase, Kind: shared.AuditKindOperator, Scope: "",
		API: shared.API("operator." + api), Service: shared.AuditServicePerson(signer.Person), Start: start, End: time.Now(),
		CallerType: shared.CallerTypePerson, CallerID: signer.Person, Result: shared.ResultSuccess, Params: p,
	}
	if opErr != nil {
		ev.Result, ev.Code, ev.Reason = shared.ResultFailure, shared.CodeOf(opErr), opErr.Error()
	}
	return mesh.PublishAudit(ctx, o.js, ev)
}

// audited records the intent of a change, applies it (fn) only once the
// intent is durable, and records the result. A change whose intent cannot
// be audited is not applied; a change whose result cannot be audited is
// reported as such (its intent is on record).
func (o *operator) audited(ctx context.Context, api string, params map[string]string, fn func() error) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	opID := "op-" + hex.EncodeToString(b[:])
	start := time.Now()
	if _, err := o.person(); err != nil {
		return err
	}
	if err := o.auditOp(ctx, opID, phaseIntent, api, start, params, nil); err != nil {
		return fmt.Errorf("%w: %w", errIntentNotAudited, err)
	}
	o.op = &currentOp{api: api, params: params}
	err := fn()
	o.op = nil
	var pe *roster.PendingError
	if errors.As(err, &pe) {
		// Not applied yet: authn or the keyworker audits the request; its
		// approval audits the change.
		p := map[string]string{"pending": pe.ID}
		for k, v := range params {
			p[k] = v
		}
		if aerr := o.auditOp(ctx, opID, phaseResult, api, start, p, nil); aerr != nil {
			return aerr
		}
		return err
	}
	if aerr := o.auditOp(ctx, opID, phaseResult, api, start, params, err); aerr != nil && err == nil {
		return fmt.Errorf("the change was made (its intent is audited as %s) but its result could not be audited: %w", opID, aerr)
	}
	return err
}

// who names the person in audit records and kill switches: the name of
// their credential (the roster's), "unknown" for a credential that is not
// a person's (it cannot change anything).
func (o *operator) who() string {
	if o.signer == nil {
		return "unknown"
	}
	return o.signer.Person
}
