// Command sdkclient fetches the instance role's credentials the way
// applications do, with AWS's own Go client (aws-sdk-go-v2
// feature/ec2/imds, IMDSv2 with a session token), and prints the result as
// JSON. The integration tests run it inside the lab under the guard.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

type result struct {
	Role        string `json:"role"`
	AccessKeyID string `json:"access_key_id"`
	Error       string `json:"error,omitempty"`
}

func main() {
	endpoint := flag.String("endpoint", "http://169.254.169.254", "IMDS endpoint")
	flag.Parse()
	r := fetch(*endpoint)
	json.NewEncoder(os.Stdout).Encode(r)
}

func fetch(endpoint string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := imds.New(imds.Options{Endpoint: endpoint, ClientEnableState: imds.ClientEnabled})
	role, err := get(ctx, client, "iam/security-credentials/")
	if err != nil {
		return result{Error: err.Error()}
	}
	role = strings.TrimSpace(role)
	creds, err := get(ctx, client, "iam/security-credentials/"+role)
	if err != nil {
		return result{Role: role, Error: err.Error()}
	}
	var c struct{ AccessKeyId string }
	if err := json.Unmarshal([]byte(creds), &c); err != nil {
		return result{Role: role, Error: fmt.Sprintf("decoding credentials: %v", err)}
	}
	return result{Role: role, AccessKeyID: c.AccessKeyId}
}

func get(ctx context.Context, c *imds.Client, path string) (string, error) {
	out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", err
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	return string(b), err
}
