//! `/auth/*`: registration, login, refresh rotation with reuse detection, logout, info,
//! the token matrix, external identity providers, admins, rate limits.

use std::time::Duration;

use base64::Engine;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, SECRET, chrono_now, sign};

fn fixture(name: &str) -> String {
    format!("{}/../tests/it/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

async fn register(d: &Daemon, email: &str) -> Value {
    let (s, body) = d
        .post(
            "/auth/registration",
            None,
            &json!({"email": email, "password": "correct horse", "name": "Ann", "birthday": "1990-02-03"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn register_login_refresh_logout_and_info() {
    let d = Daemon::start(Opts::new()).await;
    let mail = email();
    let body = register(&d, &mail).await;
    assert_eq!(body["status"], "Success");
    let user_id = body["user_id"].as_str().unwrap_or_default().to_string();
    let access = body["access_token"].as_str().unwrap_or_default().to_string();
    let refresh = body["refresh_token"].as_str().unwrap_or_default().to_string();

    let c = claims_of(&access);
    assert_eq!(
        (c["token_type"].as_str(), c["sub"].as_str(), c["uid"].as_str()),
        (Some("access"), Some(user_id.as_str()), Some(user_id.as_str()))
    );
    assert_eq!((c["iss"].as_str(), c["aud"].as_str()), (Some("conveyor"), Some("conveyor")));
    assert_eq!(c["roles"], json!(["user"]));
    assert!(c["jti"].is_string() && c["iat"].is_i64() && c["exp"].is_i64(), "{c}");
    assert!(!access.contains(&mail) && c.get("email").is_none(), "no email in tokens");
    assert_eq!(claims_of(&refresh)["token_type"], "refresh");
    let lifetime = |c: &Value| c["exp"].as_i64().unwrap_or_default() - c["iat"].as_i64().unwrap_or_default();
    assert_eq!((lifetime(&c), lifetime(&claims_of(&refresh))), (900, 864_000), "15 minutes and 10 days");

    // Duplicate (the email is normalised), invalid fields, missing fields.
    let upper = mail.to_uppercase();
    let (s, b) = d
        .post(
            "/auth/registration",
            None,
            &json!({"email": upper, "password": "another one", "name": "B", "birthday": "1991-01-01"}),
        )
        .await;
    assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "email_taken"), "{b}");
    let (s, b) = d
        .post("/auth/registration", None, &json!({"email": "nope", "password": "short", "name": "", "birthday": ""}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let fields: Vec<&str> =
        b["error"]["details"].as_array().into_iter().flatten().filter_map(|f| f["field"].as_str()).collect();
    assert_eq!(fields, ["email", "password", "name", "birthday"]);
    let (s, b) = d.post("/auth/registration", None, &json!({"email": email()})).await;
    assert_eq!(
        (s, b["error"]["details"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password")),
        "{b}"
    );
    let (s, _, b) = d.request(Method::POST, "/auth/login", None, &[], b"{not json".to_vec()).await;
    assert_eq!((s, error_code(&b)), (StatusCode::BAD_REQUEST, "malformed_json"));

    // One answer for a wrong password and an unknown email.
    let (s1, wrong) = d.post("/auth/login", None, &json!({"email": mail, "password": "wrong password"})).await;
    let (s2, unknown) = d.post("/auth/login", None, &json!({"email": email(), "password": "correct horse"})).await;
    assert_eq!((s1, s2), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!(wrong, unknown, "login must not reveal whether the email exists");
    let (s, login) =
        d.post("/auth/login", None, &json!({"email": format!(" {upper} "), "password": "correct horse"})).await;
    assert_eq!((s, login["user_id"].as_str()), (StatusCode::OK, Some(user_id.as_str())), "{login}");

    // Info, with the bearer scheme and with seed 004's bare header.
    let (s, info) = d.get("/auth/info", Some(&access)).await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!((info["user_id"].as_str(), info["email"].as_str()), (Some(user_id.as_str()), Some(mail.as_str())));
    assert_eq!(info["roles"], json!(["user"]));
    assert!(info["created_at"].is_string());
    let (s, _, _) = d.request(Method::GET, "/auth/info", None, &[("authorization", access.as_str())], vec![]).await;
    assert_eq!(s, StatusCode::OK, "a bare token in Authorization is accepted");
    assert_eq!(d.get("/auth/info", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(d.get("/auth/info", Some(&refresh)).await.0, StatusCode::UNAUTHORIZED, "refresh token used as access");

    // Refresh: only with a refresh token; rotates; reuse revokes the family.
    let (s, b) = d.post("/auth/refresh", None, &json!({"token": access})).await;
    assert_eq!((s, b["error"]["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("a refresh token is required")));
    let (s, rotated) = d.post("/auth/refresh", None, &json!({"token": refresh})).await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let access2 = rotated["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(d.get("/auth/info", Some(&access2)).await.0, StatusCode::OK);
    let (s, _) = d.post("/auth/refresh", None, &json!({"token": refresh})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a used refresh token is refused");
    assert_eq!(d.get("/auth/info", Some(&access2)).await.0, StatusCode::UNAUTHORIZED, "its whole family is revoked");
    let refresh2 = rotated["refresh_token"].as_str().unwrap_or_default();
    assert_eq!(d.post("/auth/refresh", None, &json!({"token": refresh2})).await.0, StatusCode::UNAUTHORIZED);
    // Another login (another family) is untouched.
    let other = login["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(d.get("/auth/info", Some(&other)).await.0, StatusCode::OK);

    // Logout with an access token revokes that token only; with a refresh token, the session.
    let (s, b) = d.post("/auth/logout", None, &json!({"token": other})).await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("Success")));
    assert_eq!(d.get("/auth/info", Some(&other)).await.0, StatusCode::UNAUTHORIZED);
    let login_refresh = login["refresh_token"].as_str().unwrap_or_default();
    let (s, renewed) = d.post("/auth/refresh", None, &json!({"token": login_refresh})).await;
    assert_eq!(s, StatusCode::OK, "the session outlives its logged-out access token: {renewed}");
    let renewed_access = renewed["access_token"].as_str().unwrap_or_default();
    let renewed_refresh = renewed["refresh_token"].as_str().unwrap_or_default();
    assert_eq!(d.get("/auth/info", Some(renewed_access)).await.0, StatusCode::OK);
    assert_eq!(d.post("/auth/logout", None, &json!({"token": renewed_refresh})).await.0, StatusCode::OK);
    assert_eq!(d.get("/auth/info", Some(renewed_access)).await.0, StatusCode::UNAUTHORIZED, "session ended");
    assert_eq!(d.post("/auth/refresh", None, &json!({"token": renewed_refresh})).await.0, StatusCode::UNAUTHORIZED);

    // Aliases of the probes.
    assert_eq!(d.get("/auth/healthz", None).await.0, StatusCode::OK);
    assert_eq!(d.get("/auth/ready", None).await.0, StatusCode::OK);
}

fn external_opts() -> Opts {
    Opts::new()
        .env(
            "CONVEYOR_AUTH__EXTERNAL_KEYS",
            format!(
                r#"[{{kid="idp-rsa",algorithm="RS256",public_key_file="{}"}},{{kid="idp-ed",algorithm="EdDSA",public_key_file="{}"}}]"#,
                fixture("idp-rsa.pub"),
                fixture("idp-ed25519.pub")
            ),
        )
        .env("CONVEYOR_AUTH__JWKS_FILE", fixture("idp.jwks.json"))
        .env("CONVEYOR_AUTH__EXTERNAL_ISSUER", "https://idp.example")
        .env("CONVEYOR_AUTH__PREVIOUS_KEYS", r#"[{kid="old",secret="the-old-secret"}]"#)
}

fn encode(header: Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap_or_else(|e| panic!("encode: {e}"))
}

fn with_kid(alg: Algorithm, kid: &str) -> Header {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    h
}

#[tokio::test]
async fn token_matrix_refuses_every_bad_token() {
    let d = Daemon::start(external_opts()).await;
    let now = chrono_now();
    let base = json!({"sub": "someone", "roles": ["user"], "exp": now + 600});
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    };
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("idp-rsa.key")).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let ed = EncodingKey::from_ed_pem(&std::fs::read(fixture("idp-ed25519.key")).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let idp = with(json!({"iss": "https://idp.example", "aud": "conveyor"}));

    // Accepted: seed 003 style, Conveyor style, a rotated-out key, both external algorithms
    // from PEM files and from a JWKS file.
    let good = [
        ("seed 003 token", sign(&base)),
        ("iss and aud", sign(&with(json!({"iss": "conveyor", "aud": ["other", "conveyor"]})))),
        (
            "previous key",
            encode(with_kid(Algorithm::HS256, "old"), &base, &EncodingKey::from_secret(b"the-old-secret")),
        ),
        ("RS256 from the IdP", encode(with_kid(Algorithm::RS256, "idp-rsa"), &idp, &rsa)),
        ("EdDSA from the IdP", encode(with_kid(Algorithm::EdDSA, "idp-ed"), &idp, &ed)),
        ("RS256 from the JWKS", encode(with_kid(Algorithm::RS256, "jwks-rsa"), &idp, &rsa)),
        // This JWKS entry has no `alg`: its key type (OKP, Ed25519) implies EdDSA.
        ("EdDSA from the JWKS", encode(with_kid(Algorithm::EdDSA, "jwks-ed"), &idp, &ed)),
    ];
    for (what, t) in &good {
        let (s, b) = d.get("/auth/info", Some(t)).await;
        assert_eq!(s, StatusCode::OK, "{what}: {b}");
    }

    // Refused, each with 401.
    let valid = sign(&base);
    let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
    let mut forged = claims_of(&valid);
    forged["roles"] = json!(["admin"]);
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap_or_default());
    let tampered = parts.join(".");
    let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{}.", valid.split('.').nth(1).unwrap_or_default());
    let rsa_public = std::fs::read(fixture("idp-rsa.pub")).unwrap_or_default();
    let confused = encode(with_kid(Algorithm::HS256, "idp-rsa"), &idp, &EncodingKey::from_secret(&rsa_public));
    let revoked = {
        let body = register(&d, &email()).await;
        let t = body["access_token"].as_str().unwrap_or_default().to_string();
        assert_eq!(d.post("/auth/logout", None, &json!({"token": t})).await.0, StatusCode::OK);
        t
    };
    let refresh = register(&d, &email()).await["refresh_token"].as_str().unwrap_or_default().to_string();
    let bad = [
        ("expired", sign(&with(json!({"exp": now - 3600})))),
        ("not yet valid", sign(&with(json!({"nbf": now + 3600})))),
        ("wrong audience", sign(&with(json!({"aud": "someone-else"})))),
        ("wrong issuer", sign(&with(json!({"iss": "https://evil.example"})))),
        ("alg none", alg_none),
        ("HS256 signed with the RS256 public key", confused),
        ("tampered payload", tampered),
        (
            "unknown kid",
            encode(with_kid(Algorithm::HS256, "nobody"), &base, &EncodingKey::from_secret(SECRET.as_bytes())),
        ),
        ("wrong secret", encode(Header::new(Algorithm::HS256), &base, &EncodingKey::from_secret(b"guess"))),
        ("IdP token with a wrong issuer", encode(with_kid(Algorithm::RS256, "idp-rsa"), &base, &rsa)),
        ("revoked", revoked),
        ("refresh token used as access", refresh),
        ("garbage", "not-a-token".to_string()),
    ];
    for (what, t) in &bad {
        let (s, b) = d.get("/auth/info", Some(t)).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{what}: {b}");
        let (s, _) = d.get("/resource/x", Some(t)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} on another route");
    }
}

#[tokio::test]
async fn strict_policy_requires_issuer_and_audience() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_AUTH__REQUIRE_ISSUER_AUDIENCE", "true")).await;
    let exp = chrono_now() + 600;
    let (s, _) = d.get("/auth/info", Some(&sign(&json!({"sub": "a", "exp": exp})))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "seed 003 tokens are refused under the strict policy");
    let full = sign(&json!({"sub": "a", "exp": exp, "iss": "conveyor", "aud": "conveyor"}));
    assert_eq!(d.get("/auth/info", Some(&full)).await.0, StatusCode::OK);
    let body = register(&d, &email()).await;
    assert_eq!(d.get("/auth/info", Some(body["access_token"].as_str().unwrap_or_default())).await.0, StatusCode::OK);
}

#[tokio::test]
async fn revocation_survives_losing_the_cache() {
    let mut d = Daemon::start(Opts::new()).await;
    let body = register(&d, &email()).await;
    let access = body["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(d.post("/auth/logout", None, &json!({"token": access})).await.0, StatusCode::OK);
    assert_eq!(d.get("/auth/info", Some(&access)).await.0, StatusCode::UNAUTHORIZED);
    d.terminate(Duration::from_secs(30)).await;
    // A restart empties the in-process cache; on Redis, a fresh key prefix is an empty cache.
    let opts = Opts::restart_of(&mut d).env("CONVEYOR_CACHE__KEY_PREFIX", format!("{}-flushed:", d.names.id));
    let d = Daemon::start(opts).await;
    let (s, b) = d.get("/auth/info", Some(&access)).await;
    assert_eq!((s, b["error"]["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("token revoked")), "{b}");
}

#[tokio::test]
async fn admins_from_bootstrap_and_cli() {
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_AUTH__BOOTSTRAP_ADMIN_EMAIL", "root@example.com")
            .env("CONVEYOR_AUTH__BOOTSTRAP_ADMIN_PASSWORD", "bootstrap-pass"),
    )
    .await;
    let (s, login) =
        d.post("/auth/login", None, &json!({"email": "root@example.com", "password": "bootstrap-pass"})).await;
    assert_eq!(s, StatusCode::OK, "{login}");
    let admin = login["access_token"].as_str().unwrap_or_default();
    assert_eq!(claims_of(admin)["roles"], json!(["user", "admin"]));
    assert_eq!(d.get("/admin/dead-letters", Some(admin)).await.0, StatusCode::OK);

    let user = register(&d, &email()).await;
    let user_token = user["access_token"].as_str().unwrap_or_default();
    assert_eq!(d.get("/admin/dead-letters", Some(user_token)).await.0, StatusCode::FORBIDDEN);

    let out = d
        .cli(&["user", "create", "--email", "ops@example.com", "--admin"])
        .env("CONVEYOR_USER_PASSWORD", "from-the-cli")
        .output()
        .unwrap_or_else(|e| panic!("conveyor user create: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("roles=user,admin"));
    let (s, ops) = d.post("/auth/login", None, &json!({"email": "ops@example.com", "password": "from-the-cli"})).await;
    assert_eq!(s, StatusCode::OK, "{ops}");
    assert_eq!(
        d.get("/admin/dead-letters", Some(ops["access_token"].as_str().unwrap_or_default())).await.0,
        StatusCode::OK
    );
    let again = d
        .cli(&["user", "create", "--email", "OPS@example.com"])
        .env("CONVEYOR_USER_PASSWORD", "x-long-enough")
        .output();
    assert!(again.is_ok_and(|o| !o.status.success()), "a taken email fails the CLI");
}

#[tokio::test]
async fn repeated_wrong_logins_are_throttled_per_client() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_RATE_LIMIT__AUTH_PER_IP", "{per_period=1,period_secs=60,burst=5}"))
        .await;
    let mail = email();
    register(&d, &mail).await; // spends client 127.0.0.1's budget, not the attacker's
    let wrong = serde_json::to_vec(&json!({"email": mail, "password": "guess guess"})).unwrap_or_default();
    let attacker = [("x-forwarded-for", "203.0.113.7")];
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let (s, h, b) = d.request(Method::POST, "/auth/login", None, &attacker, wrong.clone()).await;
        statuses.push(s.as_u16());
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((h, b));
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let (headers, body) = limited.unwrap_or_default();
    let retry: u64 = headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(error_code(&body), "rate_limited");

    // Another client still gets in, and the service keeps answering.
    let right = serde_json::to_vec(&json!({"email": mail, "password": "correct horse"})).unwrap_or_default();
    let (s, _, _) = d.request(Method::POST, "/auth/login", None, &[("x-forwarded-for", "198.51.100.2")], right).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d.get("/health", None).await.0, StatusCode::OK);
    let text = d.metrics().await;
    let counted = crate::harness::metric_sum(&text, "conveyor_http_rate_limited_total", "group=\"auth\"");
    assert_eq!(counted, 3.0, "{text}");
}

#[tokio::test]
async fn one_subject_is_throttled_from_any_address() {
    let d =
        Daemon::start(Opts::new().env("CONVEYOR_RATE_LIMIT__API_PER_SUBJECT", "{per_period=1,period_secs=60,burst=3}"))
            .await;
    let greedy = crate::harness::token("greedy", &["user"]);
    let mut statuses = Vec::new();
    for i in 0..5 {
        // A new address each time: the per-IP budget never runs out, the subject's does.
        let ip = format!("198.51.100.{}", 10 + i);
        let (s, _, b) = d.request(Method::GET, "/auth/info", Some(&greedy), &[("x-forwarded-for", &ip)], vec![]).await;
        statuses.push(s.as_u16());
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(error_code(&b), "rate_limited", "{b}");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let other = crate::harness::token("patient", &["user"]);
    assert_eq!(d.get("/auth/info", Some(&other)).await.0, StatusCode::OK, "another subject is untouched");
    let text = d.metrics().await;
    let counted = crate::harness::metric_sum(&text, "conveyor_http_rate_limited_total", "scope=\"subject\"");
    assert_eq!(counted, 2.0, "{text}");
}

/// Seed 004's README, request for request (headers and bodies as written; only the host
/// differs). Its password `test` is shorter than Conveyor's default policy, so this daemon
/// allows four characters, as an operator keeping those clients would.
#[tokio::test]
async fn seed_004_readme_flow_runs_as_written() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_AUTH__PASSWORD__MIN_LENGTH", "4")).await;
    let headers = [("accept", "application/json"), ("content-type", "application/json")];
    let post = |path: &'static str, body: String| {
        let d = &d;
        async move { d.request(Method::POST, path, None, &headers, body.into_bytes()).await }
    };
    let registration = |email: &str| {
        format!(
            "{{\n  \"birthday\": \"string\",\n  \"email\": \"{email}\",\n  \"name\": \"test_name\",\n  \"password\": \"test\"\n}}"
        )
    };
    let (s, _, registered) = post("/auth/registration", registration("test00@test.com")).await;
    assert_eq!((s, registered["status"].as_str()), (StatusCode::CREATED, Some("Success")), "{registered}");
    for key in ["user_id", "access_token", "refresh_token"] {
        assert!(registered[key].is_string(), "{key} in {registered}");
    }
    // The README registers test00@ but logs in as test@; both exist here.
    assert_eq!(post("/auth/registration", registration("test@test.com")).await.0, StatusCode::CREATED);

    let login = "{\n  \"email\": \"test@test.com\",\n  \"password\": \"test\"\n}".to_string();
    let (s, _, tokens) = post("/auth/login", login).await;
    assert_eq!((s, tokens["status"].as_str()), (StatusCode::OK, Some("Success")), "{tokens}");
    let access = tokens["access_token"].as_str().unwrap_or_default().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap_or_default().to_string();

    let (s, _, out) = post("/auth/logout", format!("{{\n   \"token\": \"{access}\"\n   }}")).await;
    assert_eq!((s, out), (StatusCode::OK, json!({"status": "Success"})));
    assert_eq!(d.get("/auth/info", Some(&access)).await.0, StatusCode::UNAUTHORIZED, "the logged-out token is dead");

    let (s, _, renewed) = post("/auth/refresh", format!("{{\n  \"token\": \"{refresh}\"\n}}")).await;
    assert_eq!((s, renewed["status"].as_str()), (StatusCode::OK, Some("Success")), "{renewed}");
    assert_eq!(renewed["user_id"], tokens["user_id"]);
    let renewed_access = renewed["access_token"].as_str().unwrap_or_default();
    assert_eq!(d.get("/auth/info", Some(renewed_access)).await.0, StatusCode::OK);

    // The default policy would have refused `test`, naming the field.
    let strict = Daemon::start(Opts::new()).await;
    let (s, _, b) = strict
        .request(Method::POST, "/auth/registration", None, &headers, registration("test01@test.com").into_bytes())
        .await;
    assert_eq!((s, b["error"]["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("password")));
}

/// Every operation the document does not mark public answers 401 without a token, and the
/// public ones are exactly the probes, the status page's shell (its data is admin-only), and
/// the routes that take their credentials in the body. (`/openapi.json` and `/docs` are
/// public too; the document does not list itself.)
#[tokio::test]
async fn every_route_but_the_public_ones_needs_a_token() {
    let d = Daemon::start(Opts::new()).await;
    let (s, doc) = d.get("/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let mut public = Vec::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) else { continue };
            let open = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.as_object().is_some_and(|r| r.is_empty())));
            if open {
                public.push(format!("{method} {path}"));
                continue;
            }
            let concrete: String =
                path.split('/').map(|seg| if seg.starts_with('{') { "x" } else { seg }).collect::<Vec<_>>().join("/");
            let body = if method == Method::GET || method == Method::DELETE { vec![] } else { b"{}".to_vec() };
            let (s, _, b) =
                d.request(method.clone(), &concrete, None, &[("content-type", "application/json")], body).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {concrete} without a token: {b}");
            checked += 1;
        }
    }
    public.sort();
    assert_eq!(
        public,
        [
            "GET /admin/console",
            "GET /admin/status",
            "GET /auth/healthz",
            "GET /auth/ready",
            "GET /health",
            "GET /loyalty/ready",
            "GET /metrics",
            "GET /ready",
            "POST /auth/login",
            "POST /auth/logout",
            "POST /auth/refresh",
            "POST /auth/registration",
        ]
    );
    assert!(checked >= 35, "only {checked} protected operations");
}
