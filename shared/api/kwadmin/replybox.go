package kwadmin

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Secrets on the wire (docs/security.md): the answer of seal and unseal is
// encrypted to the requester. The request carries an ephemeral X25519 public
// key and a request id; the keyworker answers with a ReplyBox: its own
// ephemeral key, and the result under AES-256-GCM with a key derived by
// HKDF-SHA256 from the X25519 shared secret, bound to the endpoint, the
// request id and both public keys. A server-side tap, or anyone reading the
// reply subject, sees ciphertext only.

// ErrReplyBox is wrapped by every failure to seal or open an encrypted reply.
var ErrReplyBox = errors.New("kwadmin: encrypted reply")

// ReplyBox is a result encrypted to the requester's ephemeral key.
type ReplyBox struct {
	EphemeralKey []byte `json:"ephemeral_key"` // keyworker's X25519 public key
	Nonce        []byte `json:"nonce"`
	Ciphertext   []byte `json:"ciphertext"`
}

// NewReplyKey makes the requester's ephemeral X25519 key of one request.
func NewReplyKey() (*ecdh.PrivateKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyBox, err)
	}
	return k, nil
}

// replyContext binds a box to its endpoint and request.
func replyContext(endpoint, requestID string) string {
	return "sovkeys kwadmin reply v1\x00" + endpoint + "\x00" + requestID
}

func replyAEAD(secret, ephPub, replyPub []byte, info string) (cipher.AEAD, error) {
	salt := append(append([]byte{}, ephPub...), replyPub...)
	key, err := hkdf.Key(sha256.New, secret, salt, info, 32)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// SealReply encrypts data to replyKey (the requester's X25519 public key)
// for the answer of endpoint to request requestID.
func SealReply(replyKey []byte, endpoint, requestID string, data []byte) (*ReplyBox, error) {
	if requestID == "" {
		return nil, fmt.Errorf("%w: no request id", ErrReplyBox)
	}
	pub, err := ecdh.X25519().NewPublicKey(replyKey)
	if err != nil {
		return nil, fmt.Errorf("%w: reply key: %v", ErrReplyBox, err)
	}
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyBox, err)
	}
	secret, err := eph.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyBox, err)
	}
	defer clear(secret)
	info := replyContext(endpoint, requestID)
	aead, err := replyAEAD(secret, eph.PublicKey().Bytes(), replyKey, info)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyBox, err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyBox, err)
	}
	return &ReplyBox{EphemeralKey: eph.PublicKey().Bytes(), Nonce: nonce, Ciphertext: aead.Seal(nil, nonce, data, []byte(info))}, nil
}

// OpenReply decrypts a box answered to key for endpoint and requestID.
func OpenReply(key *ecdh.PrivateKey, endpoint, requestID string, box *ReplyBox) ([]byte, error) {
	if box == nil {
		return nil, fmt.Errorf("%w: the keyworker answered in clear", ErrReplyBox)
	}
	eph, err := ecdh.X25519().NewPublicKey(box.EphemeralKey)
	if err != nil {
		return nil, fmt.Errorf("%w: ephemeral key: %v", ErrReplyBox, err)
	}
	secret, err := key.ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyBox, err)
	}
	defer clear(secret)
	info := replyContext(endpoint, requestID)
	aead, err := replyAEAD(secret, box.EphemeralKey, key.PublicKey().Bytes(), info)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyBox, err)
	}
	if len(box.Nonce) != aead.NonceSize() {
		return nil, fmt.Errorf("%w: nonce size", ErrReplyBox)
	}
	pt, err := aead.Open(nil, box.Nonce, box.Ciphertext, []byte(info))
	if err != nil {
		return nil, fmt.Errorf("%w: does not open (wrong key, request or endpoint)", ErrReplyBox)
	}
	return pt, nil
}
