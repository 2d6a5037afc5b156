package vsclient

import (
	"context"

	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// SignedBlob is an encrypted_secret with the service's signature over it,
// both as the service sent them (verified against the pinned key). An
// agent stores the signature beside the blob so that it can check, before
// any call, that the blob on a volume is one the service issued.
type SignedBlob struct {
	EncryptedSecret []byte
	Signature       []byte
}

// VerifyBlob checks a stored blob's signature against the pinned key.
func (c *Client) VerifyBlob(b SignedBlob) error { return c.verify(b.EncryptedSecret, b.Signature) }

// GenerateSecretSigned is GenerateSecret that also returns the signature
// of the encrypted_secret. The caller must clear secret after use.
func (c *Client) GenerateSecretSigned(ctx context.Context, instanceID, volumeUUID string) (secret []byte, blob SignedBlob, err error) {
	k, der, err := c.oneTimeKey()
	if err != nil {
		return nil, SignedBlob{}, err
	}
	defer zero(k)
	var out vs.GenerateResponse
	if err := c.post(ctx, instanceID, vs.OpGenerate, vs.GenerateRequest{RSAWrappingKey: der, VolumeUUID: volumeUUID}, &out); err != nil {
		return nil, SignedBlob{}, err
	}
	blob = SignedBlob{EncryptedSecret: out.EncryptedSecret, Signature: out.EncryptedSecretSignature}
	if err := c.VerifyBlob(blob); err != nil {
		return nil, SignedBlob{}, err
	}
	secret, err = c.unwrap(k, out.WrappedSecret, out.WrappedSecretSignature)
	if err != nil {
		return nil, SignedBlob{}, err
	}
	return secret, blob, nil
}

// ConvertSecretSigned is ConvertSecret that also returns the signature of
// the new encrypted_secret.
func (c *Client) ConvertSecretSigned(ctx context.Context, instanceID, sourceInstanceID, volumeUUID string, encryptedSecret []byte) (SignedBlob, error) {
	var out vs.ConvertResponse
	if err := c.post(ctx, instanceID, vs.OpConvert, vs.ConvertRequest{
		EncryptedSecret: encryptedSecret, VolumeUUID: volumeUUID, SourceInstanceID: sourceInstanceID,
	}, &out); err != nil {
		return SignedBlob{}, err
	}
	blob := SignedBlob{EncryptedSecret: out.EncryptedSecret, Signature: out.EncryptedSecretSignature}
	if err := c.VerifyBlob(blob); err != nil {
		return SignedBlob{}, err
	}
	return blob, nil
}
