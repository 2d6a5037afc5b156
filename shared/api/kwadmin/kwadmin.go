// Package kwadmin is the request/reply contract of a keyworker pool's admin
// API (a nats micro service on sovkeys.kwadmin.<pool>.<endpoint>): HSM health,
// key management and sealing of secrets with the pool's HSM. It holds the
// message types and a small client.
package kwadmin

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/sovkeys/sovkeys/shared"
)

// Endpoint names.
const (
	EndpointHealth    = shared.EndpointHealth
	EndpointKeyCreate = shared.EndpointKeyCreate
	EndpointKeyInfo   = shared.EndpointKeyInfo
	EndpointKeyList   = shared.EndpointKeyList
	EndpointSeal      = shared.EndpointSeal
	EndpointUnseal    = shared.EndpointUnseal
	EndpointIssueCert = shared.EndpointIssueCert
	// EndpointKeyDestroy destroys every version of a key whose deletion
	// waiting period is over; only authn may ask (KeyDestroyRequest).
	EndpointKeyDestroy = shared.EndpointKeyDestroy
)

// KeyDestroyRequest names the registry key to destroy: the keyworker
// checks in the registry that it is this pool's, pending deletion, past its
// waiting period, with this label.
type KeyDestroyRequest struct {
	Keystore string `json:"keystore"`
	KeyID    string `json:"key_id"`
	Label    string `json:"label"`
}

// KeyDestroyResponse says how many HSM versions were destroyed.
type KeyDestroyResponse struct {
	Destroyed int `json:"destroyed"`
}

// ServiceName is the micro service name every keyworker registers.
const ServiceName = shared.ServiceKeyworker

// Health statuses, as XKS reports them.
const (
	HealthActive      = "ACTIVE"
	HealthDegraded    = "DEGRADED"
	HealthUnavailable = "UNAVAILABLE"
)

// HealthResponse is one pool's HSM health.
type HealthResponse struct {
	Pool   string `json:"pool"`
	Model  string `json:"model"`
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// KeyRequest names or creates a key.
type KeyRequest struct {
	Label   string `json:"label"`
	Encrypt bool   `json:"encrypt,omitempty"`
	Decrypt bool   `json:"decrypt,omitempty"`
}

// KeyInfo describes an HSM key.
type KeyInfo struct {
	Label   string `json:"label"`
	Encrypt bool   `json:"encrypt"`
	Decrypt bool   `json:"decrypt"`
	KeySpec string `json:"key_spec"`
}

// SealRequest seals or unseals Data bound to AAD. Call fills ReplyKey and
// RequestID: the keyworker answers only in a ReplyBox encrypted to ReplyKey.
type SealRequest struct {
	Data []byte `json:"data"`
	AAD  []byte `json:"aad"`
	// ReplyKey is the requester's ephemeral X25519 public key.
	ReplyKey []byte `json:"reply_key,omitempty"`
	// RequestID binds the encrypted answer to this request.
	RequestID string `json:"request_id,omitempty"`
	// DataBox is Data of a seal request encrypted to the pool's box key
	// (answers.go): the secret is readable by the pool's keyworkers only.
	DataBox *ReplyBox `json:"data_box,omitempty"`
}

// SealResponse carries the sealed blob or the unsealed data: on the wire
// only in Box; Call opens it into Data.
type SealResponse struct {
	Data []byte    `json:"data,omitempty"`
	Box  *ReplyBox `json:"box,omitempty"`
}

// IssueCertRequest asks for an instance client certificate.
type IssueCertRequest struct {
	Tenant    string `json:"tenant"`
	Instance  string `json:"instance"`
	PublicKey []byte `json:"public_key"` // DER SubjectPublicKeyInfo
	Days      int    `json:"days"`
}

// IssueCertResponse carries the certificate and the CA that signed it.
type IssueCertResponse struct {
	Certificate []byte `json:"certificate"` // DER
	CA          []byte `json:"ca"`          // DER
}

// Call sends req to a pool's endpoint and decodes the answer into resp.
// Errors carry the keyworker's stable code.
func Call(ctx context.Context, nc *nats.Conn, pool, endpoint string, req, resp any) error {
	if sr, ok := req.(SealRequest); ok {
		return callSealed(ctx, nc, pool, endpoint, sr, resp)
	}
	return call(ctx, nc, pool, endpoint, req, resp)
}

// callSealed asks for a seal or unseal answered in a box only this call can
// open, and opens it into resp (a *SealResponse).
func callSealed(ctx context.Context, nc *nats.Conn, pool, endpoint string, req SealRequest, resp any) error {
	out, ok := resp.(*SealResponse)
	if !ok {
		return fmt.Errorf("kwadmin: %s answers a *SealResponse", endpoint)
	}
	key, err := NewReplyKey()
	if err != nil {
		return err
	}
	req.ReplyKey, req.RequestID = key.PublicKey().Bytes(), rand.Text()
	if endpoint == EndpointSeal && len(req.Data) > 0 { // answers.go: never a secret in clear
		if err := boxRequest(ctx, pool, &req); err != nil {
			return err
		}
	}
	var boxed SealResponse
	if err := call(ctx, nc, pool, endpoint, req, &boxed); err != nil {
		return err
	}
	data, err := OpenReply(key, endpoint, req.RequestID, boxed.Box)
	if err != nil {
		return err
	}
	*out = SealResponse{Data: data}
	return nil
}

func call(ctx context.Context, nc *nats.Conn, pool, endpoint string, req, resp any) error {
	return callSubject(ctx, nc, shared.KeyworkerAdminSubject(pool, endpoint), "keyworker pool "+strconv.Quote(pool), pool, endpoint, req, resp)
}

// CallAuthn sends req to authn's admin endpoint (people's registry changes
// and their approvals) and decodes the answer into resp.
func CallAuthn(ctx context.Context, nc *nats.Conn, endpoint string, req, resp any) error {
	return callSubject(ctx, nc, shared.AuthnAdminSubject(endpoint), "authn", "", endpoint, req, resp)
}

// callSubject sends req and decodes the answer; a signed answer of pool
// is verified first when ctx carries AnswerKeys (answers.go).
func callSubject(ctx context.Context, nc *nats.Conn, subject, who, pool, endpoint string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("kwadmin: encode: %w", err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	if signer := signerOf(ctx); signer != nil {
		if op := Op(endpoint, data); op != "" {
			h, err := signer.SignRequest(op, data)
			if err != nil {
				return err
			}
			msg.Header.Set(HeaderSignature, h)
		}
	}
	keys, nonce := answerKeysOf(ctx), ""
	if pool == "" || !SignedAnswer(endpoint) {
		keys = nil
	}
	if keys != nil {
		nonce = newAnswerNonce()
		msg.Header.Set(HeaderAnswerNonce, nonce)
	}
	msg, err = nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return shared.NewError(shared.CodeDependencyTimeout, "no %s answers (not running, or sealed)", who)
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return shared.NewError(shared.CodeDependencyTimeout, "%s did not answer in time", who)
		}
		return fmt.Errorf("kwadmin: %s: %w", endpoint, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &shared.Error{Code: shared.Code(code), Message: msg.Header.Get(micro.ErrorHeader)}
	}
	if keys != nil {
		if err := keys.verifyAnswer(ctx, pool, endpoint, nonce, msg.Data, msg.Header.Get(HeaderAnswerSignature)); err != nil {
			return err
		}
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("kwadmin: decode %s: %w", endpoint, err)
	}
	return nil
}
