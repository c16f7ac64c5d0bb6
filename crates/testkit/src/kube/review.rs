//! TokenReview and SubjectAccessReview, answered as the API server's authenticators and RBAC
//! would from what a test set: which tokens name which user, and what each subject may do.

use std::collections::{HashMap, HashSet};

use http::StatusCode;
use serde_json::{Value, json};

use super::Reply;

/// Which review a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `authentication.k8s.io/v1` `TokenReview`.
    Token,
    /// `authorization.k8s.io/v1` `SubjectAccessReview`.
    Access,
}

#[derive(Debug, Clone)]
struct User {
    username: String,
    groups: Vec<String>,
}

/// (subject, verb, group, resource).
type Grant = (String, String, String, String);

#[derive(Debug, Default)]
pub(super) struct Reviews {
    tokens: HashMap<String, User>,
    grants: HashSet<Grant>,
}

impl Reviews {
    pub(super) fn accept_token(&mut self, token: &str, username: &str, groups: &[&str]) {
        let groups = groups.iter().map(|g| (*g).to_owned()).collect();
        self.tokens.insert(token.to_owned(), User { username: username.to_owned(), groups });
    }

    pub(super) fn revoke_token(&mut self, token: &str) {
        self.tokens.remove(token);
    }

    pub(super) fn grant(&mut self, subject: &str, verb: &str, group: &str, resource: &str) {
        self.grants.insert((subject.to_owned(), verb.to_owned(), group.to_owned(), resource.to_owned()));
    }

    /// The review of `body`, answered 201 with its `status` filled in, as the API server does.
    pub(super) fn review(&self, kind: Kind, body: &[u8]) -> Reply {
        let request: Value = match serde_json::from_slice(body) {
            Ok(request @ Value::Object(_)) => request,
            _ => return Reply::bad_request("the request body is not a JSON object".to_owned()),
        };
        let spec = &request["spec"];
        let status = match kind {
            Kind::Token => self.token_status(spec),
            Kind::Access => self.access_status(spec),
        };
        let (api_version, kind_name) = match kind {
            Kind::Token => ("authentication.k8s.io/v1", "TokenReview"),
            Kind::Access => ("authorization.k8s.io/v1", "SubjectAccessReview"),
        };
        Reply::ok(
            StatusCode::CREATED,
            json!({
                "apiVersion": api_version,
                "kind": kind_name,
                "metadata": { "creationTimestamp": null },
                "spec": spec,
                "status": status,
            }),
        )
    }

    fn token_status(&self, spec: &Value) -> Value {
        match spec["token"].as_str().and_then(|token| self.tokens.get(token)) {
            Some(user) => json!({
                "authenticated": true,
                "user": {
                    "username": user.username,
                    "uid": format!("uid-{}", user.username),
                    "groups": user.groups,
                },
            }),
            // What kube-apiserver answers for a token no authenticator accepts.
            None => json!({ "user": {}, "error": "[invalid bearer token, token lookup failed]" }),
        }
    }

    fn access_status(&self, spec: &Value) -> Value {
        let user = spec["user"].as_str().unwrap_or_default();
        let groups: Vec<&str> =
            spec["groups"].as_array().map(|g| g.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let attributes = &spec["resourceAttributes"];
        let field = |name: &str| attributes[name].as_str().unwrap_or_default();
        let (verb, group, resource) = (field("verb"), field("group"), field("resource"));
        let matches = |granted: &str, asked: &str| granted == "*" || granted == asked;
        let allowed = self.grants.iter().any(|(subject, v, g, r)| {
            (subject == user || groups.contains(&subject.as_str()))
                && matches(v, verb)
                && matches(g, group)
                && matches(r, resource)
        });
        if allowed {
            json!({ "allowed": true, "reason": "granted by the testkit fake API server" })
        } else {
            json!({ "allowed": false })
        }
    }
}
