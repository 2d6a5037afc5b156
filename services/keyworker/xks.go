package keyworker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

func (s *Service) xksMetadata(ctx context.Context, env *shared.Envelope) ([]byte, error) {
	k, err := s.hsm.KeyInfo(ctx, env.Authz.KeyLabel)
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
	status := registry.StatusEnabled
	if env.Authz.KeyStatus == registry.StatusDisabled {
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
	req, err := xks.ParseEncrypt(env.Body)
	if err != nil {
		return nil, err
	}
	defer clear(req.Plaintext)
	params["plaintext_bytes"] = strconv.Itoa(len(req.Plaintext))
	params["aad_bytes"] = strconv.Itoa(len(req.AdditionalAuthenticatedData))
	iv, ct, tag, err := s.hsm.EncryptGCM(ctx, env.Authz.KeyLabel, req.Plaintext, xks.EncodeAAD(req.AdditionalAuthenticatedData, nil))
	if err != nil {
		return nil, err
	}
	resp := xks.EncryptResponse{AuthenticationTag: tag, Ciphertext: ct, InitializationVector: iv}
	if req.CiphertextDataIntegrityValueAlgorithm != "" {
		resp.CiphertextDataIntegrityValue = xks.CDIV(req.AdditionalAuthenticatedData, nil, iv, ct, tag)
		params["cdiv"] = req.CiphertextDataIntegrityValueAlgorithm
	}
	return marshal(resp)
}

func (s *Service) xksDecrypt(ctx context.Context, env *shared.Envelope, params map[string]string) ([]byte, error) {
	if err := s.checkEnabled(env); err != nil {
		return nil, err
	}
	req, err := xks.ParseDecrypt(env.Body)
	if err != nil {
		return nil, err
	}
	params["ciphertext_bytes"] = strconv.Itoa(len(req.Ciphertext))
	params["aad_bytes"] = strconv.Itoa(len(req.AdditionalAuthenticatedData))
	pt, err := s.hsm.DecryptGCM(ctx, env.Authz.KeyLabel, req.InitializationVector, req.Ciphertext, req.AuthenticationTag,
		xks.EncodeAAD(req.AdditionalAuthenticatedData, req.CiphertextMetadata))
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return marshal(xks.DecryptResponse{Plaintext: pt})
}

func marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("keyworker: encode response: %w", err)
	}
	return b, nil
}
