package keyworker

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/sovkeys/sovkeys/services/keyworker/internal/hsm"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

func (s *Service) xksMetadata(ctx context.Context, env *shared.Envelope) ([]byte, error) {
	v, err := s.hsm.NewestVersion(ctx, env.Authz.KeyLabel)
	if err != nil {
		return nil, err
	}
	k, err := s.hsm.KeyInfo(ctx, hsm.VersionLabel(env.Authz.KeyLabel, v))
	if err != nil {
		return nil, err
	}
	usage := []string{}
	if k.Encrypt {
		usage = append(usage, "ENCRYPT")
	}
	if k.Decrypt {
		usage = append(usage, "DECRYPT")
	}
	// XKS knows ENABLED and DISABLED: a key pending deletion is DISABLED.
	status := registry.StatusEnabled
	if env.Authz.KeyStatus != registry.StatusEnabled {
		status = registry.StatusDisabled
	}
	return marshal(xks.MetadataResponse{KeySpec: "AES_256", KeyUsage: usage, KeyStatus: status})
}

func (s *Service) checkEnabled(env *shared.Envelope) error {
	if env.Authz.KeyStatus != registry.StatusEnabled {
		return shared.NewError(shared.CodeInvalidState, "key %q is disabled", env.KeyID)
	}
	return nil
}

func (s *Service) xksEncrypt(ctx context.Context, env *shared.Envelope, params map[string]string) ([]byte, error) {
	if err := s.checkEnabled(env); err != nil {
		return nil, err
	}
	req, err := parseEncrypt(env)
	if err != nil {
		return nil, err
	}
	defer clear(req.Plaintext)
	params["plaintext_bytes"] = strconv.Itoa(len(req.Plaintext))
	params["aad_bytes"] = strconv.Itoa(len(req.AdditionalAuthenticatedData))
	label := env.Authz.KeyLabel
	version, err := s.hsm.NewestVersion(ctx, label)
	if err != nil {
		return nil, err
	}
	params["key_version"] = strconv.Itoa(version)
	vlabel := hsm.VersionLabel(label, version)
	cdiv := req.CiphertextDataIntegrityValueAlgorithm != ""
	if cdiv {
		// The check decrypts what was encrypted: a key that cannot decrypt
		// cannot give a CDIV (Appendix C).
		k, err := s.hsm.KeyInfo(ctx, vlabel)
		if err != nil {
			return nil, err
		}
		if !k.Decrypt {
			return nil, shared.NewError(shared.CodeInvalidKeyUsage, "key %q cannot decrypt, so no ciphertextDataIntegrityValue can be checked", env.KeyID)
		}
		params["cdiv"] = req.CiphertextDataIntegrityValueAlgorithm
	}
	md := xks.EncodeKeyVersion(version)
	aad := xks.EncodeAAD(req.AdditionalAuthenticatedData, md)
	for attempt := 1; ; attempt++ {
		iv, ct, tag, err := s.hsm.EncryptGCM(ctx, vlabel, req.Plaintext, aad)
		if err != nil {
			return nil, err
		}
		resp := xks.EncryptResponse{AuthenticationTag: tag, Ciphertext: ct, InitializationVector: iv, CiphertextMetadata: md}
		if !cdiv {
			return marshal(resp)
		}
		// Appendix C: the CDIV is computed from the HSM's output first, then
		// that output is decrypted through the HSM and must give back the
		// plaintext; only then is the answer released.
		resp.CiphertextDataIntegrityValue = xks.CDIV(req.AdditionalAuthenticatedData, md, iv, ct, tag)
		verr := s.checkRoundTrip(ctx, vlabel, iv, ct, tag, aad, req.Plaintext)
		if verr == nil {
			params["cdiv_verified"] = "true"
			params["cdiv_attempts"] = strconv.Itoa(attempt)
			return marshal(resp)
		}
		if errors.Is(verr, errCDIVMismatch) && attempt < cdivAttempts {
			s.log.Warn("cdiv check: decrypt of fresh ciphertext differs; encrypting again", "key_version", version)
			continue
		}
		params["cdiv_verified"] = "false"
		params["cdiv_attempts"] = strconv.Itoa(attempt)
		if errors.Is(verr, errCDIVMismatch) {
			return nil, shared.NewError(shared.CodeInternal, "ciphertext integrity check failed")
		}
		return nil, verr
	}
}

// cdivAttempts: a failed CDIV check is retried once, then InternalException.
const cdivAttempts = 2

var errCDIVMismatch = errors.New("keyworker: cdiv check: round trip does not give back the plaintext")

// checkRoundTrip decrypts a fresh ciphertext through the HSM and compares
// it with the plaintext in constant time.
func (s *Service) checkRoundTrip(ctx context.Context, label string, iv, ct, tag, aad, plaintext []byte) error {
	got, err := s.hsm.DecryptGCM(ctx, label, iv, ct, tag, aad)
	if shared.CodeOf(err) == shared.CodeInvalidCiphertext {
		return errCDIVMismatch
	}
	if err != nil {
		return err
	}
	defer clear(got)
	if subtle.ConstantTimeCompare(got, plaintext) != 1 {
		return errCDIVMismatch
	}
	return nil
}

func (s *Service) xksDecrypt(ctx context.Context, env *shared.Envelope, params map[string]string) ([]byte, error) {
	if err := s.checkEnabled(env); err != nil {
		return nil, err
	}
	req, err := parseDecrypt(env)
	if err != nil {
		return nil, err
	}
	params["ciphertext_bytes"] = strconv.Itoa(len(req.Ciphertext))
	params["aad_bytes"] = strconv.Itoa(len(req.AdditionalAuthenticatedData))
	// The version comes from ciphertextMetadata, which is also bound into
	// the AAD: a changed version byte selects a key that fails the tag.
	version, err := xks.DecodeKeyVersion(req.CiphertextMetadata)
	if err != nil {
		return nil, shared.NewError(shared.CodeInvalidCiphertext, "ciphertextMetadata was not written by this proxy")
	}
	params["key_version"] = strconv.Itoa(version)
	pt, err := s.hsm.DecryptGCM(ctx, hsm.VersionLabel(env.Authz.KeyLabel, version), req.InitializationVector, req.Ciphertext, req.AuthenticationTag,
		xks.EncodeAAD(req.AdditionalAuthenticatedData, req.CiphertextMetadata))
	if err != nil && shared.CodeOf(err) == shared.CodeKeyNotFound {
		if _, nerr := s.hsm.NewestVersion(ctx, env.Authz.KeyLabel); nerr == nil {
			// The key exists; this version of it does not (never made, or
			// destroyed): the ciphertext cannot be opened.
			return nil, shared.NewError(shared.CodeInvalidCiphertext, "ciphertext names a key version that does not exist")
		}
	}
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return marshal(xks.DecryptResponse{Plaintext: pt})
}

// parseEncrypt reads the request authn parsed (the work form), or the
// caller's JSON body when an older authn forwarded it raw.
func parseEncrypt(env *shared.Envelope) (*xks.EncryptRequest, error) {
	switch env.BodyForm {
	case shared.BodyFormXKSWork:
		return xks.ParseEncryptWork(env.Body)
	case "":
		return xks.ParseEncrypt(env.Body)
	}
	return nil, shared.NewError(shared.CodeInternal, "work body form %q unknown to this keyworker", env.BodyForm)
}

// parseDecrypt is parseEncrypt for decrypt.
func parseDecrypt(env *shared.Envelope) (*xks.DecryptRequest, error) {
	switch env.BodyForm {
	case shared.BodyFormXKSWork:
		return xks.ParseDecryptWork(env.Body)
	case "":
		return xks.ParseDecrypt(env.Body)
	}
	return nil, shared.NewError(shared.CodeInternal, "work body form %q unknown to this keyworker", env.BodyForm)
}

func marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("keyworker: encode response: %w", err)
	}
	return b, nil
}
