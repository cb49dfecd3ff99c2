import CustodyModel
import Crypto
import CustodyConfig
import Foundation
import NIOCore
import NIOSSL
import X509

/// A TLS listener's settings, read and checked once at startup: the server certificate and
/// key, TLS 1.2 and 1.3 only, and how client certificates are asked for and verified.
///
/// With `trustedCertificates`, a client certificate must chain to one of them (CA-issued);
/// without them, any certificate the client holds the key of is accepted by the handshake
/// (self-signed) and the client registry decides by thumbprint (`ThumbprintMatch`): the
/// identity carries `chainVerified = false`, which other validation schemes refuse.
public struct TLSListenerSetup: Sendable {
    public let context: NIOSSLContext
    /// What `context` was made from (for servers that make their own, such as Hummingbird's).
    public let configuration: TLSConfiguration
    public let clientCertificates: ListenerConfiguration.ClientCertificates
    /// Whether a presented client certificate has been verified against trusted CAs.
    public let verifiesChain: Bool
    /// The trusted CAs, to name a verified certificate's chain (the webhook's
    /// `clientCertificateChain`): BoringSSL verified it; this only finds its issuers again.
    let issuers: [Certificate]

    public init(_ listener: ListenerConfiguration) throws(TLSSetupError) {
        guard let certificatePath = listener.certificate, let keyPath = listener.privateKey else {
            throw TLSSetupError("an mqtts listener needs a certificate and a private key")
        }
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw TLSSetupError("cannot read the certificate \(certificatePath): \(error)")
        }
        guard !chain.isEmpty else { throw TLSSetupError("no certificate in \(certificatePath)") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw TLSSetupError("cannot read the private key \(keyPath): \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.maximumTLSVersion = .tlsv13
        var trusted: [NIOSSLCertificate] = []
        for path in listener.trustedCertificates {
            do {
                trusted += try NIOSSLCertificate.fromPEMFile(path)
            } catch {
                throw TLSSetupError("cannot read the trusted certificate \(path): \(error)")
            }
        }
        verifiesChain = !trusted.isEmpty
        issuers = trusted.compactMap { try? Certificate(derEncoded: $0.toDERBytes()) }
        switch listener.clientCertificates {
        case .none:
            configuration.certificateVerification = .none
        case .optional:
            configuration.certificateVerification = .optionalVerification
        case .required:
            configuration.certificateVerification = .noHostnameVerification
        }
        if verifiesChain {
            configuration.trustRoots = .certificates(trusted)
            configuration.sendCANameList = true
        }
        clientCertificates = listener.clientCertificates
        self.configuration = configuration
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError("cannot set up TLS with \(certificatePath) and \(keyPath): \(error)")
        }
    }

    /// Whether any certificate a client shows is let through the handshake (self-signed ones:
    /// the registry's thumbprint check decides), rather than checked against trusted CAs.
    public var acceptsAnyClientCertificate: Bool { clientCertificates != .none && !verifiesChain }

    /// The handler to put first in a connection's pipeline.
    public func makeHandler() -> NIOSSLServerHandler {
        guard acceptsAnyClientCertificate else {
            return NIOSSLServerHandler(context: context)
        }
        // Self-signed client certificates: the handshake proves the client holds the key;
        // who it is, is the registry's thumbprint check.
        return NIOSSLServerHandler(context: context, customVerificationCallback: { _, promise in
            promise.succeed(.certificateVerified)
        })
    }

    /// What the client's certificate says, once the handshake is done; nil without one.
    /// On the channel's event loop, from its pipeline (as when a CONNECT arrives).
    public func peerIdentitySynchronously(of channel: any Channel) throws -> CertificateIdentity? {
        guard let certificate = try channel.pipeline.syncOperations.nioSSL_peerCertificate() else { return nil }
        return try CertificateIdentity(der: certificate.toDERBytes(), chainVerified: verifiesChain, issuers: issuers)
    }

    /// What the client's certificate says, once the handshake is done; nil without one.
    public func peerIdentity(of channel: any Channel) -> EventLoopFuture<CertificateIdentity?> {
        let verified = verifiesChain
        let issuers = issuers
        return channel.nioSSL_peerCertificate().flatMapThrowing { certificate in
            guard let certificate else { return nil }
            return try CertificateIdentity(der: certificate.toDERBytes(), chainVerified: verified, issuers: issuers)
        }
    }
}

public struct TLSSetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension CertificateIdentity {
    /// Reads the subject's common name, the subject alternative names and the SHA-256
    /// thumbprint from a DER-encoded X.509 certificate; its chain (PEM) is the certificate and
    /// the `issuers` that signed it, up to a self-signed one.
    public init(der: [UInt8], chainVerified: Bool, issuers: [Certificate] = []) throws {
        let certificate = try Certificate(derEncoded: der)
        var commonName: String?
        for relative in certificate.subject {
            for attribute in relative where attribute.type == .RDNAttributeType.commonName {
                commonName = String(attribute.value) ?? attribute.value.description
            }
        }
        var dns: [String] = []
        var uris: [String] = []
        var ips: [String] = []
        var emails: [String] = []
        if let names = try certificate.extensions.subjectAlternativeNames {
            for name in names {
                switch name {
                case .dnsName(let value): dns.append(value)
                case .uniformResourceIdentifier(let value): uris.append(value)
                case .rfc822Name(let value): emails.append(value)
                case .ipAddress(let bytes): if let text = ipText(Array(bytes.bytes)) { ips.append(text) }
                default: break
                }
            }
        }
        let thumbprint = SHA256.hash(data: der).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
        let pem = Self.chain(of: certificate, issuers: issuers).compactMap { try? $0.serializeAsPEM().pemString }
        self.init(
            subjectCommonName: commonName, dnsNames: dns, uris: uris, ipAddresses: ips, emails: emails,
            thumbprint: thumbprint, chainVerified: chainVerified, chainPEM: pem)
    }
}

extension CertificateIdentity {
    /// `certificate`, then each certificate of `issuers` whose subject is the last one's issuer,
    /// until a self-signed one (or none is found). Only a report: BoringSSL verified the chain
    /// in the handshake, so no signature is checked again here.
    static func chain(of certificate: Certificate, issuers: [Certificate]) -> [Certificate] {
        var chain = [certificate]
        while chain.count <= issuers.count, let last = chain.last, last.issuer != last.subject,
            let issuer = issuers.first(where: { $0.subject == last.issuer })
        {
            chain.append(issuer)
        }
        return chain
    }
}

/// An IP address's usual text form: dotted for IPv4, RFC 5952 for IPv6.
func ipText(_ bytes: [UInt8]) -> String? {
    var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    switch bytes.count {
    case 4:
        var address = in_addr()
        withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
        guard inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count)) != nil else { return nil }
    case 16:
        var address = in6_addr()
        withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
        guard inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count)) != nil else { return nil }
    default:
        return nil
    }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
